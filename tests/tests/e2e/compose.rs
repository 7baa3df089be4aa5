//! compose.yaml is what a user runs: every setting a service requires (no
//! default in its `--help`, and no word of what happens when it is unset)
//! is set there, the services reach each other by
//! name, data lives on volumes, and everything has a health check.

use std::process::Command;

use yaml_rust2::{Yaml, YamlLoader};

fn compose() -> Yaml {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../compose.yaml")).unwrap();
    YamlLoader::load_from_str(&text).unwrap().remove(0)
}

/// The variables a binary's `--help` lists without a default and without
/// saying what happens when they are unset (`Unset: …`).
fn required_vars(binary: &str) -> Vec<String> {
    let path = router_tests::target_dir().join(binary);
    let help =
        String::from_utf8(Command::new(path).arg("--help").output().unwrap().stdout).unwrap();
    let mut required = Vec::new();
    let blocks: Vec<&str> = help.split("\n\n").collect();
    for block in blocks {
        if let Some(start) = block.find("[env: ") {
            let var: String = block[start + 6..]
                .chars()
                .take_while(|c| *c != '=' && *c != ']')
                .collect();
            if !block.contains("[default:") && !block.contains("Unset") {
                required.push(var);
            }
        }
    }
    required
}

fn env_of(service: &Yaml) -> &yaml_rust2::yaml::Hash {
    service["environment"]
        .as_hash()
        .expect("environment as a map")
}

#[test]
fn every_required_setting_is_set_for_each_service() {
    let doc = compose();
    for (service, binary) in [("ingest", "ingest"), ("forwarder", "forwarder")] {
        let env = env_of(&doc["services"][service]);
        let required = required_vars(binary);
        if binary == "ingest" {
            assert!(
                required.contains(&"META_APP_SECRET".to_owned()),
                "help parsing found {required:?}"
            );
        }
        for var in required.iter().chain(["NATS_URL".to_owned()].iter()) {
            let value = env.get(&Yaml::String(var.clone())).and_then(Yaml::as_str);
            assert!(
                value.is_some_and(|v| !v.is_empty()),
                "{service} does not set {var}"
            );
        }
        let nats = env[&Yaml::String("NATS_URL".into())].as_str().unwrap();
        assert_eq!(
            nats,
            format!(
                "nats://{service}:${{ROUTER_NATS_{}_PASSWORD}}@nats:4222",
                service.to_uppercase()
            ),
            "{service} reaches NATS by service name, as its own NATS user"
        );
    }
    let ingest = env_of(&doc["services"]["ingest"]);
    let db = ingest[&Yaml::String("DATABASE_URL".into())]
        .as_str()
        .unwrap();
    assert!(
        db.starts_with("postgres://") && db.contains("@postgres:5432/"),
        "{db}"
    );
    // The password is not in the URL, where `@`, `/` or `:` would break it.
    assert!(!db.contains("PASSWORD"), "{db}");
    assert_eq!(
        ingest[&Yaml::String("PGPASSWORD".into())].as_str(),
        Some("${POSTGRES_PASSWORD:?required: password of the router database user}")
    );
    let addr = ingest[&Yaml::String("INGEST_ADDR".into())]
        .as_str()
        .unwrap();
    assert!(
        addr.starts_with("0.0.0.0:"),
        "ingest must listen beyond the container"
    );
}

#[test]
fn nats_runs_with_the_repositorys_users_and_is_published_on_loopback_only() {
    let doc = compose();
    let nats = &doc["services"]["nats"];
    let command: Vec<&str> = nats["command"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    let config = command[command.iter().position(|a| *a == "-c").unwrap() + 1];
    let volumes: Vec<&str> = nats["volumes"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert!(
        volumes.contains(&format!("./nats-server.conf:{config}:ro").as_str()),
        "{volumes:?}"
    );
    let env = env_of(nats);
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../nats-server.conf"))
        .unwrap();
    for var in [
        "ROUTER_NATS_INGEST_PASSWORD",
        "ROUTER_NATS_FORWARDER_PASSWORD",
        "ROUTER_NATS_ADMIN_PASSWORD",
    ] {
        assert!(text.contains(&format!("${var}")), "the config reads {var}");
        assert!(
            env.contains_key(&Yaml::String(var.into())),
            "compose sets {var}"
        );
    }
    for port in nats["ports"].as_vec().unwrap() {
        assert!(
            port.as_str().unwrap().starts_with("127.0.0.1:"),
            "NATS published beyond loopback: {port:?}"
        );
    }
}

#[test]
fn data_is_on_volumes_and_services_are_health_checked_and_scaled() {
    let doc = compose();
    for service in ["nats", "postgres", "ingest", "forwarder"] {
        assert!(
            doc["services"][service]["healthcheck"]["test"]
                .as_vec()
                .is_some(),
            "{service} has no health check"
        );
    }
    for (service, volume) in [("nats", "nats-data"), ("postgres", "postgres-data")] {
        let mounts = doc["services"][service]["volumes"].as_vec().unwrap();
        assert!(
            mounts
                .iter()
                .any(|m| m.as_str().unwrap().starts_with(volume)),
            "{service} data not on {volume}"
        );
        assert!(
            !doc["volumes"][volume].is_badvalue(),
            "volume {volume} not declared"
        );
    }
    let replicas = doc["services"]["forwarder"]["deploy"]["replicas"]
        .as_i64()
        .unwrap();
    assert!(replicas >= 2, "forwarders are replicated");
    // One image, built once from the repository, runs as both services.
    let ingest = &doc["services"]["ingest"];
    let forwarder = &doc["services"]["forwarder"];
    assert_eq!(
        ingest["build"].as_str(),
        Some("."),
        "built from the repository"
    );
    assert!(
        forwarder["build"].is_badvalue(),
        "the forwarder is not built again"
    );
    let image = ingest["image"].as_str().expect("the built image is named");
    assert_eq!(forwarder["image"].as_str(), Some(image));
    assert_eq!(forwarder["pull_policy"].as_str(), Some("never"));
}

fn cluster_file() -> Yaml {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../compose.cluster.yaml"
    ))
    .unwrap();
    YamlLoader::load_from_str(&text).unwrap().remove(0)
}

fn args(service: &Yaml) -> Vec<&str> {
    service["command"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(Yaml::as_str)
        .collect()
}

fn after<'a>(args: &[&'a str], flag: &str) -> &'a str {
    args[args.iter().position(|a| *a == flag).unwrap() + 1]
}

#[test]
fn the_cluster_file_runs_three_routed_servers_and_replicates_everything_three_times() {
    let base = compose();
    let cluster = cluster_file();
    let servers = ["nats", "nats-2", "nats-3"];
    let mut names = Vec::new();
    for server in servers {
        let args = args(&cluster["services"][server]);
        // The same server as compose.yaml's, plus its place in the cluster.
        assert!(args.starts_with(&args_of_base(&base)), "{server}: {args:?}");
        names.push(after(&args, "-n").to_owned());
        assert_eq!(after(&args, "--cluster_name"), "router");
        assert_eq!(after(&args, "--cluster"), "nats://0.0.0.0:6222");
        let mut routes: Vec<&str> = after(&args, "--routes").split(',').collect();
        routes.sort_unstable();
        let mut others: Vec<String> = servers
            .iter()
            .filter(|s| **s != server)
            .map(|s| format!("nats://{s}:6222"))
            .collect();
        others.sort_unstable();
        assert_eq!(routes, others, "{server} routes to the other two");
    }
    names.dedup();
    assert_eq!(names.len(), 3, "each server has its own name");
    for (server, volume) in [("nats-2", "nats-2-data"), ("nats-3", "nats-3-data")] {
        let service = &cluster["services"][server];
        assert!(service["healthcheck"]["test"].as_vec().is_some());
        let mounts: Vec<&str> = service["volumes"]
            .as_vec()
            .unwrap()
            .iter()
            .filter_map(Yaml::as_str)
            .collect();
        assert!(mounts.contains(&format!("{volume}:/data").as_str()));
        assert!(mounts.contains(&"./nats-server.conf:/etc/nats/nats-server.conf:ro"));
        assert!(!cluster["volumes"][volume].is_badvalue());
        assert_eq!(env_of(service), env_of(&base["services"]["nats"]));
    }
    for (service, binary) in [("ingest", "ingest"), ("forwarder", "forwarder")] {
        let env = env_of(&cluster["services"][service]);
        let single = env_of(&base["services"][service])[&Yaml::String("NATS_URL".into())]
            .as_str()
            .unwrap();
        let urls = env[&Yaml::String("NATS_URL".into())].as_str().unwrap();
        assert_eq!(
            urls,
            format!("{single},nats://nats-2:4222,nats://nats-3:4222"),
            "{service} knows every server, logging in as itself"
        );
        assert_eq!(
            env[&Yaml::String("ROUTER_STREAM_REPLICAS".into())].as_str(),
            Some("3")
        );
        let help = Command::new(router_tests::target_dir().join(binary))
            .arg("--help")
            .output()
            .unwrap()
            .stdout;
        assert!(
            String::from_utf8(help)
                .unwrap()
                .contains("[env: ROUTER_STREAM_REPLICAS=")
        );
    }
}

/// compose.yaml's nats-server arguments.
fn args_of_base(base: &Yaml) -> Vec<&str> {
    args(&base["services"]["nats"])
}
