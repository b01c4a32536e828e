//! A service refuses settings that cannot work before it starts anything:
//! a malformed file, an unknown key, a missing certificate, an admin port
//! in use — each a clear error naming the field or file, exit code 2. The
//! merger's binary stands for every service (they share `service_main`).

use std::net::TcpListener;
use std::process::{Command, Output};

fn merger(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_adpipe-merger"))
        .args(args)
        .envs(env.iter().copied())
        .env("ADPIPE_STATE_DIR", std::env::temp_dir())
        .output()
        .expect("adpipe-merger runs")
}

fn refused(output: &Output, names: &[&str]) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "exit 2: {stderr}");
    for name in names {
        assert!(stderr.contains(name), "the error names {name}: {stderr}");
    }
}

#[test]
fn settings_that_cannot_work_stop_it_with_exit_2_naming_them() {
    let dir = std::env::temp_dir().join(format!("adpipe-refusals-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a dir");

    let malformed = dir.join("malformed.toml");
    std::fs::write(&malformed, "[kafka\nbootstrap-servers = ").expect("a file");
    refused(
        &merger(&["--config", malformed.to_str().expect("utf-8")], &[]),
        &["malformed.toml"],
    );

    refused(
        &merger(&[], &[("ADPIPE__MERGER__GRACES", "5s")]),
        &["graces"],
    );

    refused(
        &merger(
            &[],
            &[
                ("ADPIPE__KAFKA__SECURITY__PROTOCOL", "ssl"),
                (
                    "ADPIPE__KAFKA__SECURITY__SSL_CA_LOCATION",
                    "/nonexistent/ca.pem",
                ),
            ],
        ),
        &["ssl-ca-location", "/nonexistent/ca.pem"],
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn an_admin_port_in_use_stops_it_before_it_touches_kafka() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("a port");
    let address = taken.local_addr().expect("its address").to_string();
    // A real cluster without these inputs: had the service gone on to its
    // topic check, it would have failed there (exit 1, "topic ... does not
    // exist").
    let bootstrap = adpipe_testkit::kafka("central");
    let output = merger(
        &[],
        &[
            ("ADPIPE__HTTP__LISTEN", address.as_str()),
            ("ADPIPE__KAFKA__BOOTSTRAP_SERVERS", bootstrap.as_str()),
            ("ADPIPE__MERGER__DCS", r#"["refusals-no-such-dc"]"#),
        ],
    );
    refused(&output, &["http.listen", &address, "in use"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("topic"),
        "nothing but the port was tried: {stderr}"
    );
}
