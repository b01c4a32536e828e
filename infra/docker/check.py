#!/usr/bin/env python3
"""Static checks of infra/docker/ (no container engine runs here).

The compose files are loaded by compose-go (composecheck/, the library Docker
Compose itself uses: schema, interpolation, normalization) with the example
env files; this checks the result against what adpipe's binaries accept:

- every adpipe service runs a binary the image holds; a worker's command and
  environment pass its own `--check-config` (unknown keys and bad values
  exit 2); a CLI command's flags and the registry's variables appear in the
  binary's `--help`; no other variable than those and RUST_LOG/ADPIPE_STATE_DIR;
- every long-running service has a health check, a restart policy and
  resource limits; state directories lie on named volumes;
- published ports and scrape targets are the ports the services listen on;
  Prometheus's jobs are the ones the rules and dashboards know;
- the cluster maps and MirrorMaker 2's configuration agree with the topology;
- Kafka security: each file is loaded twice, with its example env file and
  with the example's secured settings (SASL_SSL, SCRAM, a password file and a
  CA as secrets): a variable that names /run/secrets/NAME needs the service
  to mount NAME (its --check-config then reads the host's file), and
  MirrorMaker 2 reads central's password from its mounted secret, never
  from its properties;
- the Dockerfile: hadolint, every service binary copied in, a non-root
  numeric user, a HEALTHCHECK, every shared library the binaries link present
  in the runtime base image.

  check.py --composecheck BIN --bin-dir target/debug [--hadolint BIN] [--self-test]

--self-test breaks a copy of each project in the ways the checks exist to
catch (an unknown variable, a wrong port, no health check, a state dir off
its volume, a scrape target that is not a service) and fails unless every
breakage is reported.
"""

import argparse
import copy
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
COMPOSE_FILES = {
    "compose.central.yml": "central.env.example",
    "compose.dc.yml": "dc.env.example",
}
# The secured variant of each: these over the example env file (FILES are
# files the check writes; their contents must never reach a config).
SECURED = {
    "KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
    "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "KAFKA_SASL_USERNAME": "adpipe",
    "KAFKA_SASL_PASSWORD_FILE": "FILES/kafka-password",
    "KAFKA_SSL_CA_FILE": "FILES/kafka-ca.pem",
    "CENTRAL_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "CENTRAL_KAFKA_SASL_USERNAME": "mirrormaker-dc1",
    "CENTRAL_KAFKA_SASL_PASSWORD_FILE": "FILES/central-kafka-password",
    "CENTRAL_KAFKA_CA_FILE": "FILES/central-kafka-ca.pem",
}
SECRET_VALUE = "not-a-real-password-7f3a"
# Variables the binaries read besides ADPIPE__… settings and clap's [env: …].
RUNTIME_VARIABLES = {"RUST_LOG", "ADPIPE_STATE_DIR"}
# Shared libraries the runtime image (debian:bookworm-slim + ca-certificates,
# which brings openssl and libssl3) provides.
RUNTIME_LIBRARIES = {
    "linux-vdso.so.1", "libc.so.6", "libm.so.6", "libgcc_s.so.1", "libpthread.so.0",
    "libdl.so.2", "librt.so.1", "ld-linux-x86-64.so.2", "libz.so.1", "libssl.so.3",
    "libcrypto.so.3", "libstdc++.so.6",
}


class Checker:
    def __init__(self, bin_dir: Path):
        self.bin_dir = bin_dir
        self.problems: list[str] = []
        self._help_cache: dict[tuple, str] = {}
        self._config_cache: dict[tuple, tuple[int, str]] = {}

    def problem(self, where: str, text: str):
        self.problems.append(f"{where}: {text}")

    # --- the binaries -----------------------------------------------------

    def image_binaries(self) -> list[str]:
        text = (HERE / "Dockerfile").read_text()
        return sorted(set(re.findall(r"target/release/(adpipe[\w-]*)", text)))

    def help_text(self, binary: str, subcommands: tuple) -> str:
        key = (binary, subcommands)
        if key not in self._help_cache:
            run = subprocess.run([str(self.bin_dir / binary), *subcommands, "--help"],
                                 capture_output=True, text=True, env={"PATH": os.environ["PATH"]})
            self._help_cache[key] = run.stdout if run.returncode == 0 else ""
        return self._help_cache[key]

    def is_worker(self, binary: str) -> bool:
        return "--check-config" in self.help_text(binary, ())

    def check_config(self, binary: str, args: list, environment: dict) -> tuple[int, str]:
        env = {"PATH": os.environ["PATH"], "ADPIPE_STATE_DIR": "/var/lib/adpipe", **environment}
        key = (binary, tuple(args), tuple(sorted(env.items())))
        if key not in self._config_cache:
            run = subprocess.run([str(self.bin_dir / binary), *args, "--check-config"],
                                 capture_output=True, text=True, env=env)
            self._config_cache[key] = (run.returncode, run.stdout + run.stderr)
        return self._config_cache[key]

    # --- compose ------------------------------------------------------------

    def check_project(self, name: str, project: dict):
        self.secret_files = {key: value.get("file") for key, value in (project.get("secrets") or {}).items()}
        binaries = self.image_binaries()
        volumes = set(project.get("volumes") or {})
        for service_name, service in sorted(project["services"].items()):
            where = f"{name}: {service_name}"
            one_shot = service.get("restart") == "on-failure"
            if not service.get("restart"):
                self.problem(where, "no restart policy")
            limits = ((service.get("deploy") or {}).get("resources") or {}).get("limits") or {}
            if not limits.get("memory") or not limits.get("cpus"):
                self.problem(where, "no resource limits (deploy.resources.limits memory and cpus)")
            health = service.get("healthcheck") or {}
            if not one_shot and (not health.get("test") or health.get("disable")):
                self.problem(where, "no health check")
            for mount in service.get("volumes") or []:
                if mount.get("type") == "volume" and mount.get("source") not in volumes:
                    self.problem(where, f"volume {mount.get('source')} is not declared")
            image = service.get("image", "")
            if "adpipe" in image.split("/")[-1].split(":")[0]:
                self.check_adpipe_service(where, service, binaries)

    def check_adpipe_service(self, where: str, service: dict, binaries: list[str]):
        command = service.get("command") or []
        if not command or command[0] not in binaries:
            self.problem(where, f"command {command} does not start a binary of the image {binaries}")
            return
        binary, args = command[0], command[1:]
        environment = {k: str(v) for k, v in (service.get("environment") or {}).items()}
        # A secret's path in the container: the service must mount it; its
        # settings are checked with the host's file in its place.
        mounted = {s.get("source"): s.get("target") or f"/run/secrets/{s.get('source')}"
                   for s in service.get("secrets") or []}
        for variable, value in list(environment.items()):
            if value.startswith("/run/secrets/"):
                secret = next((source for source, target in mounted.items() if target == value), None)
                if secret is None:
                    self.problem(where, f"{variable} = {value}: no secret of this service is mounted there")
                else:
                    environment[variable] = self.secret_files.get(secret) or value
        listen = None
        if self.is_worker(binary):
            status, output = self.check_config(binary, args, environment)
            if status != 0:
                self.problem(where, f"{binary} --check-config refuses this service's settings "
                             f"(exit {status}):\n    " + output.strip().replace("\n", "\n    "))
                return
            # workers print it as http_listen, the reconciler as listen
            found = re.search(r"\b(?:http_)?listen: (\S+),", output)
            listen = found.group(1) if found else None
            self.check_state_on_volumes(where, service, output)
            # scraped by Prometheus (every service serves /metrics)
            service["x-worker"] = True
            help_text = self.help_text(binary, ())
        else:
            subcommands = tuple(a for a in args if not a.startswith("-"))
            # the leading words that are subcommands (each asks --help)
            path = ()
            for word in subcommands:
                if self.help_text(binary, path + (word,)):
                    path = path + (word,)
                else:
                    break
            help_text = self.help_text(binary, path)
            if not help_text:
                self.problem(where, f"{binary} {' '.join(path)} --help failed")
            for flag in (a.split("=")[0] for a in args if a.startswith("--")):
                if not re.search(rf"(^|\s){re.escape(flag)}[\s,=<]", help_text):
                    self.problem(where, f"{binary} {' '.join(path)} takes no flag {flag}")
            if "ADPIPE_REGISTRY_LISTEN" in environment:
                listen = environment["ADPIPE_REGISTRY_LISTEN"]
            if "--listen" in args[:-1]:
                listen = args[args.index("--listen") + 1]
        for variable in environment:
            if variable.startswith("ADPIPE__") and self.is_worker(binary):
                continue  # checked by --check-config
            # `[env: NAME]` alone where the binary hides a secret's value;
            # the CLI lists the Kafka security variables in its own --help
            if variable in RUNTIME_VARIABLES or re.search(rf"\[env: {re.escape(variable)}[=\]]", help_text):
                continue
            if variable.startswith("ADPIPE__KAFKA__SECURITY__") and re.search(
                    rf"(^|\s){re.escape(variable)}\s", self.help_text(binary, ())):
                continue
            self.problem(where, f"{binary} reads no variable {variable}")
        if service.get("restart") == "on-failure":
            return
        if listen is None:
            self.problem(where, "no admin address (ADPIPE__HTTP__LISTEN or ADPIPE_REGISTRY_LISTEN)")
            return
        host, _, port = listen.rpartition(":")
        if port == "0":
            self.problem(where, f"admin address {listen}: a fixed port is needed (health check, scraping)")
        if host.strip("[]") in ("127.0.0.1", "::1", "localhost"):
            self.problem(where, f"admin address {listen} is loopback: Prometheus in another container cannot scrape it")
        for published in service.get("ports") or []:
            if str(published.get("target")) != port:
                self.problem(where, f"publishes container port {published.get('target')}, but listens on {port}")
        service["x-listen-port"] = port

    def check_state_on_volumes(self, where: str, service: dict, config_output: str):
        mounts = [m["target"] for m in service.get("volumes") or [] if m.get("type") == "volume"]
        # A loader's files dir matters only to the files sink.
        fields = "state_dir|dir" if "sink: Files" in config_output else "state_dir"
        for field, path in re.findall(rf"\b({fields}): \"(/[^\"]*)\"", config_output):
            if not any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounts):
                self.problem(where, f"{field} {path} is not on a named volume (mounts: {mounts})")

    # --- prometheus -----------------------------------------------------------

    def check_prometheus(self, project: dict, promtool: str | None):
        where = "prometheus.yml"
        ours = yaml.safe_load((HERE / "prometheus.yml").read_text())
        reference = yaml.safe_load((REPO / "infra/prometheus/prometheus.yml").read_text())
        jobs = {job["job_name"]: job for job in ours["scrape_configs"]}
        known = {job["job_name"] for job in reference["scrape_configs"]}
        if set(jobs) != known:
            self.problem(where, f"jobs {sorted(jobs)} differ from infra/prometheus's {sorted(known)}")
        targets = {}
        for job_name, job in jobs.items():
            for static in job.get("static_configs") or []:
                for target in static["targets"]:
                    targets[target] = job_name
        services = project["services"]
        for target, job_name in targets.items():
            host, _, port = target.rpartition(":")
            service = services.get(host)
            if service is None:
                self.problem(where, f"target {target} ({job_name}) is no service of compose.central.yml")
            elif service.get("x-listen-port") != port:
                self.problem(where, f"target {target}: {host} listens on {service.get('x-listen-port')}")
            elif f"adpipe-{job_name.removeprefix('adpipe-')}" != service["command"][0]:
                self.problem(where, f"target {target} is in job {job_name}, but runs {service['command'][0]}")
        for name, service in services.items():
            if service.get("x-worker"):
                if f"{name}:{service['x-listen-port']}" not in targets:
                    self.problem(where, f"service {name} is not scraped")
        for target_file in (HERE / "prometheus-targets").glob("*.yml"):
            for group in yaml.safe_load(target_file.read_text()) or []:
                if not group.get("targets"):
                    self.problem(str(target_file), "a group without targets")
        if promtool:
            run = subprocess.run([promtool, "check", "config", "--syntax-only", str(HERE / "prometheus.yml")],
                                 capture_output=True, text=True)
            if run.returncode != 0:
                self.problem(where, "promtool check config: " + (run.stdout + run.stderr).strip())

    # --- cluster maps and MirrorMaker 2 ---------------------------------------

    def check_kafka_configs(self, name: str, project: dict):
        configs = project.get("configs") or {}
        topology = (REPO / "topologies/pipeline.toml").read_text()
        clusters = tomllib.loads(configs["clusters"]["content"])["cluster"]
        roles = {c["name"]: c["role"] for c in clusters}
        if list(roles.values()).count("central") != 1:
            self.problem(name, f"the cluster map needs one central cluster: {roles}")
        if "central.events-for-{cluster}" in topology and "central" not in roles:
            self.problem(name, "the topology's replica central.events-for-<dc> needs the central cluster named central")
        topics = project["services"].get("topics", {}).get("command", [])
        only = topics[topics.index("--only") + 1] if "--only" in topics else None
        if only not in roles:
            self.problem(name, f"topology apply --only {only}: no such cluster in the map {sorted(roles)}")
        if "mm2" in configs:
            mm2 = dict(line.split(" = ", 1) for line in configs["mm2"]["content"].splitlines()
                       if " = " in line and not line.startswith("#"))
            aliases = [a.strip() for a in mm2["clusters"].split(",")]
            for alias in aliases:
                if f"{alias}.bootstrap.servers" not in mm2:
                    self.problem(name, f"MirrorMaker 2: no {alias}.bootstrap.servers")
            if sorted(aliases) != sorted(roles):
                self.problem(name, f"MirrorMaker 2's clusters {aliases} are not the map's {sorted(roles)}")
            self.check_mm2_security(name, project, configs["mm2"]["content"], mm2)

    def check_mm2_security(self, name: str, project: dict, content: str, mm2: dict):
        """A secured cluster's password comes from a mounted secret file."""
        service = next((s for s in project["services"].values()
                        if any(c.get("source") == "mm2" for c in s.get("configs") or [])), None)
        if service is None:
            self.problem(name, "no service mounts MirrorMaker 2's configuration")
            return
        mounted = {s.get("target") or f"/run/secrets/{s.get('source')}" for s in service.get("secrets") or []}
        if SECRET_VALUE in content:
            self.problem(name, "MirrorMaker 2's properties hold a password's value")
        for key, value in mm2.items():
            alias = key.split(".", 1)[0]
            if key.endswith(".security.protocol") and value.upper().startswith("SASL"):
                jaas = mm2.get(f"{alias}.sasl.jaas.config", "")
                found = re.search(r'password="\$\{dir:([^:}]+):([^}]+)\}"', jaas)
                if not found:
                    self.problem(name, f"MirrorMaker 2: {alias}'s password is not read from a secret file (${{dir:...}})")
                elif f"{found.group(1)}/{found.group(2)}" not in mounted:
                    self.problem(name, f"MirrorMaker 2: {alias}'s password file {found.group(1)}/{found.group(2)} is not a mounted secret")
                if "${dir:" in jaas and "DirectoryConfigProvider" not in mm2.get("config.providers.dir.class", ""):
                    self.problem(name, "MirrorMaker 2: ${dir:...} without the DirectoryConfigProvider")
            if key.endswith(".ssl.truststore.location") and value not in mounted:
                self.problem(name, f"MirrorMaker 2: {key} = {value} is not a mounted secret")

    # --- the Dockerfile ---------------------------------------------------------

    def check_dockerfile(self, hadolint: str | None):
        where = "Dockerfile"
        text = (HERE / "Dockerfile").read_text()
        metadata = json.loads(subprocess.run(
            ["cargo", "metadata", "--no-deps", "--format-version", "1", "--locked"],
            capture_output=True, text=True, check=True, cwd=REPO).stdout)
        service_bins = sorted(
            target["name"]
            for package in metadata["packages"] if "/services/" in package["manifest_path"]
            for target in package["targets"] if "bin" in target["kind"]
            and target["name"] != "adpipe-chaos")  # the chaos test's harness, not a service
        missing = sorted(set(service_bins) - set(self.image_binaries()))
        if missing:
            self.problem(where, f"service binaries not copied into the image: {missing}")
        users = re.findall(r"^USER\s+(\S+)", text, re.M)
        if not users or not re.fullmatch(r"[1-9][0-9]*(:[0-9]+)?", users[-1]):
            self.problem(where, f"the last USER must be a numeric non-root user: {users}")
        if not re.search(r"^HEALTHCHECK\s", text, re.M):
            self.problem(where, "no HEALTHCHECK")
        for binary in service_bins:
            run = subprocess.run(["ldd", str(self.bin_dir / binary)], capture_output=True, text=True)
            for library in re.findall(r"^\s*(\S+)", run.stdout, re.M):
                library = library.split("/")[-1]
                if library not in RUNTIME_LIBRARIES:
                    self.problem(where, f"{binary} links {library}, which the runtime image lacks")
        if hadolint:
            run = subprocess.run([hadolint, "--no-color", str(HERE / "Dockerfile")],
                                 capture_output=True, text=True)
            if run.returncode != 0:
                self.problem(where, "hadolint:\n    " + run.stdout.strip().replace("\n", "\n    "))


def load(composecheck: str, compose_file: str, env_file: Path) -> dict:
    run = subprocess.run([composecheck, "-all-profiles", "-env-file", str(env_file),
                          str(HERE / compose_file)], capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"{compose_file}: {run.stderr.strip()}")
    return json.loads(run.stdout)


def check_all(checker: Checker, projects: dict, promtool):
    for name, project in projects.items():
        checker.check_project(name, project)
        checker.check_kafka_configs(name, project)
    checker.check_prometheus(projects["compose.central.yml"], promtool)


def self_test(bin_dir: Path, projects: dict) -> list[str]:
    """Each breakage must be reported; returns the ones that were not."""
    def dedup(p): return p["compose.central.yml"]["services"]["deduplicator"]
    def secured_dedup(p): return p["compose.central.yml (secured)"]["services"]["deduplicator"]
    def secured_mm2(p): return p["compose.dc.yml (secured)"]["configs"]["mm2"]
    breakages = {
        "an unknown setting": lambda p: dedup(p)["environment"].__setitem__("ADPIPE__DEDUPLICATOR__WINDOWS", "1h"),
        "a bad value": lambda p: dedup(p)["environment"].__setitem__("ADPIPE__DEDUPLICATOR__WINDOW", "soon"),
        "an unknown variable": lambda p: dedup(p)["environment"].__setitem__("ADPIPE_DEDUP_WINDOW", "1h"),
        "a loopback admin address": lambda p: dedup(p)["environment"].__setitem__("ADPIPE__HTTP__LISTEN", "127.0.0.1:9102"),
        "a scrape target on the wrong port": lambda p: dedup(p)["environment"].__setitem__("ADPIPE__HTTP__LISTEN", "0.0.0.0:9999"),
        "no health check": lambda p: dedup(p).pop("healthcheck"),
        "no resource limits": lambda p: dedup(p).pop("deploy"),
        "state off its volume": lambda p: dedup(p).pop("volumes"),
        "a binary the image lacks": lambda p: dedup(p).__setitem__("command", ["adpipe-dedup"]),
        "a flag the CLI lacks": lambda p: p["compose.dc.yml"]["services"]["topics"]["command"].append("--force"),
        "a registry variable it lacks": lambda p: p["compose.central.yml"]["services"]["registry"]["environment"].__setitem__("ADPIPE_REGISTRY_PORT", "8081"),
        "a registry beyond loopback without its write token": lambda p: p["compose.central.yml"]["services"]["registry"]["environment"].pop("ADPIPE_REGISTRY_TOKEN"),
        "a published port it does not listen on": lambda p: p["compose.dc.yml"]["services"]["profile-loader"]["ports"][0].__setitem__("target", 9107),
        "an unscraped worker": lambda p: p["compose.central.yml"]["services"].__setitem__(
            "merger-2", copy.deepcopy(p["compose.central.yml"]["services"]["merger"])),
        "MirrorMaker 2 without a cluster's servers": lambda p: p["compose.dc.yml"]["configs"]["mm2"].__setitem__(
            "content", p["compose.dc.yml"]["configs"]["mm2"]["content"].replace("central.bootstrap.servers", "central.bootstrap")),
        "a Kafka secret a service names but does not mount": lambda p: secured_dedup(p).pop("secrets"),
        "SASL without a user": lambda p: secured_dedup(p)["environment"].pop("ADPIPE__KAFKA__SECURITY__SASL_USERNAME"),
        "a CLI security variable that does not exist": lambda p: p["compose.central.yml (secured)"]["services"]["topics"]["environment"].__setitem__(
            "ADPIPE__KAFKA__SECURITY__SASL_USER", "adpipe"),
        "MirrorMaker 2 with central's password in its properties": lambda p: secured_mm2(p).__setitem__(
            "content", secured_mm2(p)["content"].replace("${dir:/run/secrets:central-kafka-password}", SECRET_VALUE)),
        "MirrorMaker 2 without central's password file": lambda p: p["compose.dc.yml (secured)"]["services"]["mirrormaker"].pop("secrets"),
    }
    silent = []
    for what, breakage in breakages.items():
        broken = copy.deepcopy(projects)
        breakage(broken)
        checker = Checker(bin_dir)
        check_all(checker, broken, None)
        if not checker.problems:
            silent.append(what)
        else:
            print(f"  self-test: {what} -> {checker.problems[0].splitlines()[0]}")
    return silent


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--composecheck", required=True)
    parser.add_argument("--bin-dir", type=Path, default=REPO / "target/debug")
    parser.add_argument("--hadolint")
    parser.add_argument("--promtool")
    parser.add_argument("--self-test", action="store_true")
    args = parser.parse_args()
    projects = {f: load(args.composecheck, f, HERE / env) for f, env in COMPOSE_FILES.items()}
    with tempfile.TemporaryDirectory() as files:
        for name in ("kafka-password", "central-kafka-password"):
            Path(files, name).write_text(SECRET_VALUE)
        for name in ("kafka-ca.pem", "central-kafka-ca.pem"):
            Path(files, name).write_text("-----BEGIN CERTIFICATE-----\n")
        for compose_file, env in COMPOSE_FILES.items():
            secured = Path(files, env)
            secured.write_text((HERE / env).read_text() + "\n" + "".join(
                f"{key}={value.replace('FILES', files)}\n" for key, value in SECURED.items()))
            projects[f"{compose_file} (secured)"] = load(args.composecheck, compose_file, secured)
        return check_and_report(args, projects)


def check_and_report(args, projects: dict):
    checker = Checker(args.bin_dir)
    check_all(checker, copy.deepcopy(projects), args.promtool)
    checker.check_dockerfile(args.hadolint)
    for problem in checker.problems:
        print(f"problem: {problem}", file=sys.stderr)
    if checker.problems:
        sys.exit(f"infra/docker: {len(checker.problems)} problem(s)")
    services = sum(len(p["services"]) for p in projects.values())
    print(f"infra/docker: {len(projects)} compose files, {services} services, the Dockerfile: no problem")
    if args.self_test:
        silent = self_test(args.bin_dir, projects)
        if silent:
            sys.exit(f"self-test: these breakages went unreported: {silent}")
        print("infra/docker: self-test: every breakage reported")


if __name__ == "__main__":
    main()
