"""Checks InstantChat's deployment files; run by scripts/validate-deploy (which installs the tools).

    python validate_deploy.py --root REPO --tools DIR [--self-test]

What is checked, and with what:
  Dockerfile          hadolint; the service targets exist; builder and runtime on one Debian
                      release; every COPY source exists; the stages that build copy every
                      directory Cargo.toml takes path dependencies from; the runtime user is not root.
  docker-compose.yml  the Compose specification schema (check-jsonschema's vendored copy); then
                      what a schema cannot see: ${VAR} interpolations against .env.example, build
                      targets, bind-mounted files, depends_on, the gateway's replicas and ports,
                      every service env var known to the binary, the nginx and Prometheus
                      configs pointing at services and ports that exist.
  deploy/k8s          every kustomization's references resolve; base and every overlay render
                      (kubectl kustomize, else kustomize); each rendered object against the
                      Kubernetes JSON schemas in strict mode (kubernetes-validate, oldest and
                      newest supported version); HTTPRoute and ServiceMonitor against their CRD
                      schemas (validate-crds.mjs); then the deployment rules of docs/deploy.md
                      (probes, preStop, grace period above the drain deadline, resources, PDBs,
                      the HPA's slow scale-down, secrets only through secretKeyRef, routes and
                      Services pointing at ports that exist, env vars known to the binaries).
  deploy/nats         the Helm values parse and enable JetStream on persistent storage (the chart
                      itself is not available offline, so its schema is not applied).
Prints one line per problem and exits 1 when there is any; prints nothing else on success.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import kubernetes_validate
import yaml

# Oldest Kubernetes minor the manifests support, and the newest the schemas know.
K8S_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]
SERVICE_TARGETS = {"ingest", "gateway", "instantchat"}
# The Cargo package each image target ships.
SERVICE_PACKAGES = {"ingest": "instantchat-ingest", "gateway": "instantchat-gateway", "instantchat": "instantchat"}
SECRET_VARS = {"INSTAGRAM_APP_SECRET", "INSTAGRAM_WEBHOOK_VERIFY_TOKEN", "JWT_SECRET",
               "NATS_INGEST_PASSWORD", "NATS_GATEWAY_PASSWORD"}
COMPOSE_SECRET_VARS = SECRET_VARS | {"JWT_SECRET_PREVIOUS"}
# Services whose open-files limit compose must raise (every connection is a file).
NOFILE_SERVICES = ("nats", "ingest", "gateway", "lb")
# The NATS user each service logs in as (deploy/compose/nats.conf, deploy/nats/values.yaml).
NATS_USERS = {"ingest": "ingest", "gateway": "gateway"}
# Env vars a binary reads without a clap `env = "..."` (tracing's filter, the OTLP exporter).
ALWAYS_KNOWN_ENV = {"RUST_LOG", "OTEL_EXPORTER_OTLP_ENDPOINT"}
# Seconds a gateway may take to drain when SHUTDOWN_TIMEOUT_SECS is not set (its default), and a
# nominal time for ingest to finish in-flight webhooks.
DEFAULT_DRAIN_SECS = 10
CRD_GROUPS = {"gateway.networking.k8s.io", "gateway.networking.x-k8s.io", "monitoring.coreos.com"}


class Checker:
    def __init__(self, root: Path, tools: Path):
        self.root = root
        self.tools = tools
        self.problems: list[str] = []
        self.crd_resources: list[dict] = []
        self.dockerfile_args: dict[str, str] = {}

    def problem(self, where: str, message: str) -> None:
        self.problems.append(f"{where}: {message}")

    def rel(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.root))
        except ValueError:
            return str(path)

    def load_yaml(self, path: Path, multi: bool = False):
        try:
            text = path.read_text()
            return list(yaml.safe_load_all(text)) if multi else yaml.safe_load(text)
        except FileNotFoundError:
            self.problem(self.rel(path), "missing")
        except yaml.YAMLError as e:
            self.problem(self.rel(path), f"not valid YAML: {e}")
        return None

    # ---------------------------------------------------------------- binaries' settings

    def known_env(self, service: str) -> set[str] | None:
        """The env vars a service's binary reads, from its clap definitions."""
        crate = {"ingest": "ingest", "gateway": "gateway"}[service]
        path = self.root / "crates" / crate / "src" / "config.rs"
        try:
            names = set(re.findall(r'env\s*=\s*"([A-Z0-9_]+)"', path.read_text()))
        except FileNotFoundError:
            self.problem(self.rel(path), "missing: cannot tell which env vars the service reads")
            return None
        return names | ALWAYS_KNOWN_ENV

    def check_env_names(self, where: str, service: str, names) -> None:
        known = self.known_env(service)
        if known is None:
            return
        for name in sorted(set(names) - known):
            self.problem(where, f"{name} is not a setting of instantchat-{service} "
                                f"(crates/{service}/src/config.rs)")

    # ---------------------------------------------------------------- Dockerfile

    def check_dockerfile(self) -> set[str]:
        path = self.root / "Dockerfile"
        if not path.exists():
            self.problem("Dockerfile", "missing")
            return set()
        self.run_tool("Dockerfile (hadolint)",
                      [str(self.tools / "venv" / "bin" / "hadolint"), "--no-color", str(path)])
        text = path.read_text()
        logical = re.sub(r"\\\n", " ", text)
        args: dict[str, str] = {}
        stages: dict[str, dict] = {}
        current = None
        for raw in logical.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            word, _, rest = line.partition(" ")
            word = word.upper()
            if word == "ARG" and current is None:
                name, _, default = rest.partition("=")
                args[name.strip()] = default.strip()
            elif word == "FROM":
                m = re.match(r"(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?", rest, re.I)
                image = re.sub(r"\$\{?(\w+)\}?", lambda v: args.get(v.group(1), v.group(0)), m.group(1))
                current = (m.group(2) or f"#{len(stages)}").lower()
                parent = stages.get(image.lower())
                stages[current] = {"image": image, "parent": parent, "user": None, "from": image.lower(),
                                   "copied": set(), "copied_from": set(), "runs": []}
            elif word == "RUN" and current is not None:
                stages[current]["runs"].append(rest)
            elif word in ("COPY", "ADD") and current is not None:
                parts = rest.split()
                froms = [p.split("=", 1)[1].lower() for p in parts if p.startswith("--from=")]
                if froms:
                    stages[current]["copied_from"].update(froms)
                    continue
                sources = [p for p in parts if not p.startswith("--")][:-1]
                for src in sources:
                    stages[current]["copied"].add(src.strip("./").split("/")[0])
                    if not (self.root / src).exists():
                        self.problem("Dockerfile", f"{word} source `{src}` does not exist in the repository")
            elif word == "USER" and current is not None:
                stages[current]["user"] = rest.split(":")[0].strip()
        for target in sorted(SERVICE_TARGETS - set(stages)):
            self.problem("Dockerfile", f"no `{target}` target (FROM ... AS {target})")

        def chain(name):
            stage = stages.get(name)
            while stage is not None:
                yield stage
                stage = stage["parent"]

        def base_image(name):
            return list(chain(name))[-1]["image"]

        def codename(image):
            m = re.search(r"(bookworm|trixie|bullseye|buster|noble|jammy)", image)
            return m.group(1) if m else None

        runtime_images = {base_image(t) for t in SERVICE_TARGETS if t in stages}

        def copied(name):
            return set().union(*(s["copied"] for s in chain(name)))

        # Each service image takes its binary from a stage that compiles that package alone: an
        # image build compiles only what it ships (not the console, the bench or the tools).
        needed = self.cargo_path_dirs()
        builds = {n for n, st in stages.items() if any("cargo build" in r for r in st["runs"])}
        if not builds:
            self.problem("Dockerfile", "no stage runs `cargo build`")
        for target, package in sorted(SERVICE_PACKAGES.items()):
            if target not in stages:
                continue
            sources = {f for s in chain(target) for f in s["copied_from"]} & builds
            if not sources:
                self.problem("Dockerfile", f"target `{target}` copies its binary from no stage that runs cargo build")
            for src in sorted(sources):
                cmds = " ".join(r for r in stages[src]["runs"] if "cargo build" in r)
                packages = set(re.findall(r"(?:-p|--package)[ =]([\w-]+)", cmds))
                if packages != {package} or re.search(r"--(workspace|all|bins)\b", cmds):
                    self.problem("Dockerfile", f"stage `{src}` (target `{target}`) must build only "
                                               f"`-p {package}`; it builds {sorted(packages) or 'everything'}"
                                               f"{' with --workspace/--all/--bins' if re.search(r'--(workspace|all|bins)', cmds) else ''}")
                build_release = codename(base_image(src))
                if build_release is None or codename(base_image(target)) != build_release:
                    self.problem("Dockerfile", f"builder ({base_image(src)}) and runtime ({base_image(target)}) "
                                               "are not on the same Debian release")
        # The stages that read the workspace need every directory Cargo.toml points into: the
        # crates, and the patched dependencies of [patch.crates-io].
        for name in sorted(builds):
            for missing in sorted(needed - copied(name)):
                self.problem("Dockerfile", f"stage `{name}` does not COPY `{missing}`, which "
                                           "Cargo.toml takes path dependencies from")
        self.dockerfile_args = args
        for target in sorted(SERVICE_TARGETS & set(stages)):
            user = next((s["user"] for s in chain(target) if s["user"]), None)
            if user is None or user in ("0", "root"):
                self.problem("Dockerfile", f"target `{target}` runs as root (add a USER)")
            elif not user.isdigit():
                self.problem("Dockerfile", f"target `{target}`: USER {user} should be numeric so "
                                           "Kubernetes' runAsNonRoot can check it")
        return set(stages)

    def cargo_path_dirs(self) -> set[str]:
        """Top-level directories of the path dependencies and patches in Cargo.toml."""
        manifest = tomllib.loads((self.root / "Cargo.toml").read_text())
        tables = [manifest.get("workspace", {}).get("dependencies", {}),
                  *manifest.get("patch", {}).values()]
        return {dep["path"].strip("./").split("/")[0]
                for table in tables for dep in table.values()
                if isinstance(dep, dict) and "path" in dep}

    # ---------------------------------------------------------------- docker-compose.yml

    def check_compose(self, dockerfile_stages: set[str]) -> None:
        path = self.root / "docker-compose.yml"
        where = "docker-compose.yml"
        self.run_tool(f"{where} (Compose specification)",
                      [str(self.tools / "venv" / "bin" / "check-jsonschema"), "--builtin-schema",
                       "vendor.compose-spec", str(path)])
        compose = self.load_yaml(path)
        if not isinstance(compose, dict):
            return
        services = compose.get("services") or {}

        # ${VAR} interpolation against .env.example
        env_example = self.root / ".env.example"
        documented, assigned = set(), set()
        if env_example.exists():
            for line in env_example.read_text().splitlines():
                m = re.match(r"\s*(#\s*)?([A-Z][A-Z0-9_]*)=", line)
                if m:
                    documented.add(m.group(2))
                    if not m.group(1):
                        assigned.add(m.group(2))
        else:
            self.problem(".env.example", "missing")
        text = path.read_text()
        for m in re.finditer(r"\$(\$|\{([^}]*)\}|[A-Za-z_][A-Za-z0-9_]*|)", text):
            token = m.group(1)
            if token == "$":
                continue
            if token == "":
                self.problem(where, "a lone `$`: write $$ for a literal dollar sign")
                continue
            expr = m.group(2) if m.group(2) is not None else token
            vm = re.match(r"([A-Za-z_][A-Za-z0-9_]*)(:?[-?+].*)?$", expr, re.S)
            if not vm:
                self.problem(where, f"`${{{expr}}}` is not a valid interpolation")
                continue
            name, op = vm.group(1), vm.group(2) or ""
            if env_example.exists() and name not in documented:
                self.problem(where, f"${{{name}}} is not in .env.example (add it, commented if optional)")
            if op.lstrip(":").startswith("?"):
                self.problem(where, f"${{{expr}}}: a required variable makes every compose command fail "
                                    "without .env (ps, logs, down too); give it a default and let the "
                                    "service refuse to start instead")
        # The secrets are left empty in .env.example: a value there would be copied into .env and
        # could be taken for a real secret.
        if env_example.exists():
            for line in env_example.read_text().splitlines():
                m = re.match(r"\s*([A-Z][A-Z0-9_]*)=(.*)$", line)
                if m and m.group(1) in COMPOSE_SECRET_VARS and m.group(2).strip():
                    self.problem(".env.example", f"{m.group(1)} has a value: leave secrets empty, with a "
                                                 "comment on how to generate one")

        volumes_declared = set((compose.get("volumes") or {}).keys())
        for name, svc in services.items():
            svc = svc or {}
            swhere = f"{where}: services.{name}"
            build = svc.get("build")
            if isinstance(build, dict) and build.get("target") and dockerfile_stages \
                    and build["target"] not in dockerfile_stages:
                self.problem(swhere, f"build target `{build['target']}` is not a Dockerfile stage")
            deps = svc.get("depends_on") or []
            for dep in (deps.keys() if isinstance(deps, dict) else deps):
                if dep not in services:
                    self.problem(swhere, f"depends_on `{dep}`, which is not a service")
            for vol in svc.get("volumes") or []:
                source = vol.split(":")[0] if isinstance(vol, str) else (vol or {}).get("source", "")
                if source.startswith((".", "/")):
                    if not (self.root / source).exists():
                        self.problem(swhere, f"bind-mounts `{source}`, which does not exist")
                elif source and source not in volumes_declared:
                    self.problem(swhere, f"volume `{source}` is not declared under top-level volumes")
            env = svc.get("environment") or {}
            if isinstance(env, list):
                env = dict(e.split("=", 1) if "=" in e else (e, None) for e in env)
            if name in ("ingest", "gateway"):
                self.check_env_names(swhere, name, env.keys())
                if svc.get("env_file"):
                    self.problem(swhere, "env_file: keep every setting in `environment` "
                                         "(e2e/tests/compose.test.mjs runs the binaries with it)")

        gateway = services.get("gateway")
        if not gateway:
            self.problem(where, "no `gateway` service")
        else:
            if gateway.get("ports"):
                self.problem(f"{where}: services.gateway", "publishes host ports; replicas are "
                                                           "reached through the load balancer")
            replicas = (gateway.get("deploy") or {}).get("replicas", 1)
            if not isinstance(replicas, int) or replicas < 2:
                self.problem(f"{where}: services.gateway", "deploy.replicas should be 2 or more")
            genv = gateway.get("environment") if isinstance(gateway.get("environment"), dict) else {}
            drain = int(genv.get("SHUTDOWN_TIMEOUT_SECS", DEFAULT_DRAIN_SECS))
            grace = parse_seconds(str(gateway.get("stop_grace_period", "10s")))
            if grace is None or grace <= drain:
                self.problem(f"{where}: services.gateway",
                             f"stop_grace_period must exceed SHUTDOWN_TIMEOUT_SECS ({drain}s)")
        for name in ("ingest", "nats"):
            if name not in services:
                self.problem(where, f"no `{name}` service")
        self.check_compose_limits_and_trust(where, services)
        if "healthcheck" not in (services.get("nats") or {}):
            self.problem(f"{where}: services.nats", "no healthcheck")

        def exposed(name):
            svc = services.get(name) or {}
            ports = {str(p).split(":")[-1].split("/")[0] for p in svc.get("expose") or []}
            ports |= {str(p).split(":")[-1].split("/")[0] if isinstance(p, (str, int))
                      else str(p.get("target")) for p in svc.get("ports") or []}
            env_port = (svc.get("environment") or {}).get("PORT") if isinstance(svc.get("environment"), dict) else None
            return ports | ({str(env_port)} if env_port else set())

        # the load balancer's config
        lb = next((n for n, s in services.items()
                   if any("nginx.conf" in str(v) for v in (s or {}).get("volumes") or [])), None)
        if lb is None:
            self.problem(where, "no load balancer service (nginx) in front of the gateways")
        else:
            self.check_nginx(services, exposed)
            if not any("3000" in str(p).rsplit(":", 1)[0] for p in services[lb].get("ports") or []):
                self.problem(f"{where}: services.{lb}", "should publish http://localhost:3000")

        obs = {"otel-collector", "jaeger", "prometheus"}
        for name in sorted(obs):
            if name not in services:
                self.problem(where, f"no `{name}` service (observability profile)")
            elif "observability" not in (services[name].get("profiles") or []):
                self.problem(f"{where}: services.{name}", "should be in `profiles: [observability]`")
        prom = self.load_yaml(self.root / "deploy/compose/prometheus.yml")
        if isinstance(prom, dict):
            for job in prom.get("scrape_configs") or []:
                for sd in job.get("dns_sd_configs") or []:
                    for host in sd.get("names") or []:
                        if host not in services:
                            self.problem("deploy/compose/prometheus.yml",
                                         f"job {job.get('job_name')}: `{host}` is not a compose service")
                        elif str(sd.get("port")) not in exposed(host):
                            self.problem("deploy/compose/prometheus.yml",
                                         f"job {job.get('job_name')}: {host} does not expose port {sd.get('port')}")
                for sc in job.get("static_configs") or []:
                    for target in sc.get("targets") or []:
                        host, _, port = target.partition(":")
                        if host != "localhost" and host not in services:
                            self.problem("deploy/compose/prometheus.yml", f"target `{target}`: no such service")
        otel = self.load_yaml(self.root / "deploy/compose/otel-collector.yaml")
        if isinstance(otel, dict):
            pipes = ((otel.get("service") or {}).get("pipelines") or {})
            for kind in ("receivers", "processors", "exporters"):
                declared = set((otel.get(kind) or {}).keys())
                for pname, pipe in pipes.items():
                    for item in pipe.get(kind) or []:
                        if item not in declared:
                            self.problem("deploy/compose/otel-collector.yaml",
                                         f"pipeline {pname} uses {kind[:-1]} `{item}`, which is not declared")
            for ename, exp in (otel.get("exporters") or {}).items():
                endpoint = str((exp or {}).get("endpoint", ""))
                host = endpoint.split("://")[-1].split(":")[0]
                if ename.startswith("otlp") and host not in services:
                    self.problem("deploy/compose/otel-collector.yaml",
                                 f"exporter {ename} sends to `{host}`, which is not a compose service")

    def check_compose_limits_and_trust(self, where: str, services: dict) -> None:
        def default(value):
            """A compose value with its ${VAR:-default} interpolations replaced by the defaults."""
            return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?-([^}]*)\}", r"\1", str(value))

        for name in NOFILE_SERVICES:
            svc = services.get(name) or {}
            nofile = (svc.get("ulimits") or {}).get("nofile")
            if name in services and not nofile:
                self.problem(f"{where}: services.{name}", "no `ulimits: nofile`: containers may start with a "
                                                          "soft limit of 1,024 open files")
        # Build arguments: the same defaults as the Dockerfile's, so both build the same thing.
        for name, svc in services.items():
            build = (svc or {}).get("build")
            if isinstance(build, dict):
                for arg, value in (build.get("args") or {}).items():
                    want = self.dockerfile_args.get(arg)
                    if want is None:
                        self.problem(f"{where}: services.{name}", f"build arg {arg} is not an ARG of the Dockerfile")
                    elif default(value) != want:
                        self.problem(f"{where}: services.{name}", f"build arg {arg} defaults to {default(value)}, "
                                                                  f"the Dockerfile to {want}")
        # Each service logs in to NATS as its own user of nats.conf.
        users = self.nats_conf_permissions()
        for name, user in NATS_USERS.items():
            env = (services.get(name) or {}).get("environment") or {}
            url = str(env.get("NATS_URL", "")) if isinstance(env, dict) else ""
            m = re.match(r"nats://([^:@/]+):([^@]+)@", url)
            if not m:
                self.problem(f"{where}: services.{name}", "NATS_URL has no user and password "
                                                          "(nats://USER:${PASSWORD}@nats:4222)")
            elif m.group(1) != user or (users is not None and user not in users):
                self.problem(f"{where}: services.{name}", f"NATS_URL logs in as `{m.group(1)}`, not as the "
                                                          f"`{user}` user of deploy/compose/nats.conf")
        # The gateways believe X-Forwarded-For from the load balancer's one address only.
        gw_env = (services.get("gateway") or {}).get("environment") or {}
        trusted = [t.strip() for t in default(gw_env.get("TRUSTED_PROXIES", "")).split(",") if t.strip()]
        lb_address = default((((services.get("lb") or {}).get("networks") or {}).get("default") or {})
                             .get("ipv4_address", ""))
        for entry in trusted:
            if entry.split("/")[0] != lb_address or entry.split("/")[-1] not in (entry, "32"):
                self.problem(f"{where}: services.gateway", f"TRUSTED_PROXIES `{entry}` is more than the load "
                                                           f"balancer's address ({lb_address or 'lb has no fixed address'}): "
                                                           "whoever else it covers can choose their address")

    def nats_conf_permissions(self) -> dict | None:
        """{user: {"publish": [...], "subscribe": [...]}} from deploy/compose/nats.conf."""
        path = self.root / "deploy/compose/nats.conf"
        if not path.exists():
            self.problem("deploy/compose/nats.conf", "missing")
            return None
        text = re.sub(r"#[^\n]*", "", path.read_text())
        users = {}
        for m in re.finditer(r"user:\s*(\w+)(.*?)(?=user:|\Z)", text, re.S):
            block = m.group(2)
            perms = {}
            for kind in ("publish", "subscribe"):
                k = re.search(kind + r":\s*\{\s*allow:\s*\[([^\]]*)\]", block)
                perms[kind] = sorted(re.findall(r'"([^"]+)"', k.group(1))) if k else None
            if not re.search(r"password:\s*\$[A-Z_]+", block):
                self.problem("deploy/compose/nats.conf", f"user {m.group(1)}: the password is not taken "
                                                         "from the environment ($VAR)")
            users[m.group(1)] = perms
        return users

    def check_nginx(self, services: dict, exposed) -> None:
        where = "deploy/compose/nginx.conf"
        path = self.root / where
        if not path.exists():
            self.problem(where, "missing")
            return
        text = re.sub(r"#[^\n]*", "", path.read_text())
        if text.count("{") != text.count("}"):
            self.problem(where, "unbalanced braces")
        if not re.search(r"\bresolver\s+127\.0\.0\.11\b", text):
            self.problem(where, "no `resolver 127.0.0.11` (Docker's DNS): scaled replicas would not be found")
        upstreams = dict(re.findall(r"upstream\s+(\w+)\s*\{([^}]*)\}", text))
        for name, body in upstreams.items():
            for host, port, params in re.findall(r"server\s+([\w.-]+):(\d+)([^;]*);", body):
                if host not in services:
                    self.problem(where, f"upstream {name}: `{host}` is not a compose service")
                elif port not in exposed(host):
                    self.problem(where, f"upstream {name}: {host} does not listen on {port}")
                if "resolve" not in params.split():
                    self.problem(where, f"upstream {name}: `server {host}:{port}` without `resolve` "
                                        "is resolved once at start")
            if "zone " not in body:
                self.problem(where, f"upstream {name}: `resolve` needs a `zone`")
        locations = dict(re.findall(r"location\s+(?:=\s*)?(\S+)\s*\{([^}]*)\}", text))
        # `map SOURCE $var { ... }`: a proxy_pass through $var may reach any of its values.
        maps = {var: re.findall(r"^\s*(?:\S+|\"[^\"]*\")\s+(\S+);", body, re.M)
                for var, body in re.findall(r"map\s+\S+\s+\$(\w+)\s*\{([^}]*)\}", text)}

        def targets(loc):
            m = re.search(r"proxy_pass\s+http://(\$?\w+)", locations.get(loc, ""))
            if not m:
                return []
            name = m.group(1)
            return maps.get(name[1:], []) if name.startswith("$") else [name]

        gws = targets("/socket.io/")
        if not gws or not all(re.search(r"server\s+gateway:", upstreams.get(g, "")) for g in gws):
            self.problem(where, "location /socket.io/ does not proxy to the gateway upstream")
        else:
            body = locations["/socket.io/"]
            if "Upgrade" not in body or "proxy_http_version 1.1" not in body:
                self.problem(where, "location /socket.io/ does not pass the WebSocket upgrade")
            if not any(re.search(r"\b(ip_hash|hash\s+\$remote_addr|sticky)\b", upstreams.get(g, "")) for g in gws):
                self.problem(where, f"upstreams {gws}: no sticky balancing (long-polling needs it)")
        wh = targets("/api/webhooks/instagram")
        if not wh or not re.search(r"server\s+ingest:", upstreams.get(wh[0], "")):
            self.problem(where, "location = /api/webhooks/instagram does not proxy to ingest")
        # X-Forwarded-For: the gateways trust it from nginx, so nginx must send the one address it
        # determined, not append to what the client sent. proxy_set_header is inherited only by a
        # location that sets none itself, so each proxying location is checked on its own.
        server_level = re.sub(r"location\s+[^{]*\{[^}]*\}", "", text)
        for loc, body in locations.items():
            if "proxy_pass" not in body:
                continue
            headers = body if "proxy_set_header" in body else server_level
            xff = re.search(r"proxy_set_header\s+X-Forwarded-For\s+(\S+);", headers, re.I)
            if xff is None or xff.group(1) != "$remote_addr":
                self.problem(where, f"location {loc}: X-Forwarded-For must be set to $remote_addr "
                                    f"(has {xff.group(1) if xff else 'none'}): a client could name any address")
        for value in re.findall(r"set_real_ip_from\s+(\S+);", text):
            prefix = value.split("/")[1] if "/" in value else "32"
            if value.startswith(("0.0.0.0", "::")) or int(prefix) < 24:
                self.problem(where, f"set_real_ip_from {value}: trust only the proxies in front (a narrow range)")
        # Open files: two per proxied connection.
        m_limit = re.search(r"worker_rlimit_nofile\s+(\d+);", text)
        m_conns = re.search(r"worker_connections\s+(\d+);", text)
        if not m_limit:
            self.problem(where, "no worker_rlimit_nofile: workers keep the container's soft limit (1,024)")
        elif m_conns and int(m_limit.group(1)) < 2 * int(m_conns.group(1)):
            self.problem(where, "worker_rlimit_nofile is below twice worker_connections (two files per proxied connection)")

    # ---------------------------------------------------------------- Kubernetes

    def kustomizations(self, k8s: Path):
        for path in sorted(k8s.rglob("kustomization.yaml")):
            if "node_modules" not in path.parts:
                yield path

    def check_kustomize_references(self, k8s: Path) -> None:
        secret_example = (k8s / "base" / "secret.example.yaml").resolve()
        if not secret_example.exists():
            self.problem("deploy/k8s/base/secret.example.yaml", "missing (documents the Secret's keys)")
        for kfile in self.kustomizations(k8s):
            data = self.load_yaml(kfile) or {}
            here = kfile.parent
            refs = [("resources", r) for r in data.get("resources") or []]
            refs += [("components", r) for r in data.get("components") or []]
            refs += [("patches", p["path"]) for p in data.get("patches") or [] if isinstance(p, dict) and "path" in p]
            for gen in (data.get("configMapGenerator") or []) + (data.get("secretGenerator") or []):
                refs += [("generator envs", e) for e in gen.get("envs") or []]
                refs += [("generator files", f.split("=")[-1]) for f in gen.get("files") or []]
            for kind, ref in refs:
                target = (here / ref).resolve()
                if target == secret_example:
                    self.problem(self.rel(kfile), "lists secret.example.yaml: the Secret must not be "
                                                  "part of the manifests (create it out of band)")
                if kind == "generator envs" and not target.exists():
                    example = target.with_name(target.name + ".example")
                    if not example.exists():
                        self.problem(self.rel(kfile), f"{kind} `{ref}`: neither it nor {ref}.example exists")
                    ignore = here / ".gitignore"
                    if not (ignore.exists() and target.name in ignore.read_text().split()):
                        self.problem(self.rel(kfile), f"{kind} `{ref}` holds secrets: list it in "
                                                      f"{self.rel(here)}/.gitignore")
                    continue
                if not target.exists():
                    self.problem(self.rel(kfile), f"{kind} `{ref}` does not exist")
                elif kind in ("resources", "components") and target.is_dir() \
                        and not (target / "kustomization.yaml").exists():
                    self.problem(self.rel(kfile), f"{kind} `{ref}` is a directory without kustomization.yaml")

    def render(self, k8s: Path, directory: Path) -> list[dict] | None:
        """Renders a kustomization, with gitignored generator inputs taken from their examples."""
        with tempfile.TemporaryDirectory(prefix="validate-deploy-") as tmp:
            copy_root = Path(tmp) / "k8s"
            shutil.copytree(k8s, copy_root, ignore=shutil.ignore_patterns("node_modules"))
            for kfile in self.kustomizations(copy_root):
                data = yaml.safe_load(kfile.read_text()) or {}
                for gen in data.get("secretGenerator") or []:
                    for env in gen.get("envs") or []:
                        target = kfile.parent / env
                        example = target.with_name(target.name + ".example")
                        if not target.exists() and example.exists():
                            shutil.copy(example, target)
            target = copy_root / directory.relative_to(k8s)
            if os.environ.get("VALIDATE_DEPLOY_NO_KUSTOMIZE"):  # to exercise the fallback
                return None
            if shutil.which("kubectl"):
                cmd = ["kubectl", "kustomize", str(target)]
            elif shutil.which("kustomize"):
                cmd = ["kustomize", "build", str(target)]
            else:
                return None
            result = subprocess.run(cmd, capture_output=True, text=True)
            if result.returncode != 0:
                err = result.stderr.strip()
                m = re.search(r'err="(.*)"\s*$', err, re.S)
                if m:
                    err = m.group(1).replace('\\"', '"')
                self.problem(self.rel(directory), f"does not render: {err.replace(str(copy_root) + '/', '')}")
                return []
            return [d for d in yaml.safe_load_all(result.stdout) if d]

    def validate_objects(self, where: str, docs: list[dict]) -> None:
        for doc in docs:
            if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
                self.problem(where, "a document without kind/apiVersion")
                continue
            name = f"{doc['kind']}/{(doc.get('metadata') or {}).get('name', '?')}"
            group = doc["apiVersion"].split("/")[0] if "/" in doc["apiVersion"] else ""
            if group in CRD_GROUPS:
                self.crd_resources.append({"where": where, "doc": doc})
                continue
            for version in K8S_VERSIONS:
                try:
                    kubernetes_validate.validate(doc, version, strict=True)
                except kubernetes_validate.ValidationError as e:
                    path = ".".join(str(p) for p in e.path) or "(top level)"
                    self.problem(where, f"{name} at {path}: {e.message} (Kubernetes {e.version}, strict)")
                    break
                except kubernetes_validate.SchemaNotFoundError as e:
                    self.problem(where, f"{name}: {e.message}")
                    break

    def check_k8s(self) -> None:
        k8s = self.root / "deploy" / "k8s"
        if not (k8s / "base" / "kustomization.yaml").exists():
            self.problem("deploy/k8s/base", "no kustomization.yaml")
            return
        self.check_kustomize_references(k8s)
        overlays = sorted(p.parent for p in (k8s / "overlays").glob("*/kustomization.yaml"))
        for required in ("dev", "production"):
            if not (k8s / "overlays" / required / "kustomization.yaml").exists():
                self.problem(f"deploy/k8s/overlays/{required}", "missing")
        example = self.load_yaml(k8s / "base" / "secret.example.yaml")
        secret_keys = set()
        if isinstance(example, dict):
            self.validate_objects("deploy/k8s/base/secret.example.yaml", [example])
            secret_keys = set((example.get("stringData") or {}).keys()) | set((example.get("data") or {}).keys())
            for key, value in sorted({**(example.get("data") or {}), **(example.get("stringData") or {})}.items()):
                if value:
                    self.problem("deploy/k8s/base/secret.example.yaml", f"{key} has a value: leave it empty, "
                                                                        "with a comment on how to generate one")
        rendered_any = False
        for directory in [k8s / "base", *overlays]:
            docs = self.render(k8s, directory)
            where = self.rel(directory)
            if docs is None:
                break
            rendered_any = True
            if not docs:
                continue
            self.validate_objects(where, docs)
            kdata = yaml.safe_load((directory / "kustomization.yaml").read_text()) or {}
            self.check_k8s_rules(where, docs, secret_keys, is_overlay=directory.parent.name == "overlays",
                                 generates_secret=bool(kdata.get("secretGenerator")))
        if not rendered_any:
            # Neither kubectl nor kustomize: each file on its own (references were checked above).
            print("validate-deploy: no kubectl or kustomize; validating the manifest files one by one",
                  file=sys.stderr)
            for path in sorted(k8s.rglob("*.yaml")):
                if path.name == "kustomization.yaml" or "node_modules" in path.parts:
                    continue
                docs = self.load_yaml(path, multi=True) or []
                complete = [d for d in docs if isinstance(d, dict) and (d.get("spec") or d.get("data")
                                                                      or d.get("kind") == "Namespace")]
                if path.parent.name in ("dev", "production") and path.name == "patches.yaml":
                    continue
                self.validate_objects(self.rel(path), complete)

    def check_k8s_rules(self, where: str, docs: list[dict], secret_keys: set[str], is_overlay: bool,
                        generates_secret: bool) -> None:
        by_kind: dict[str, list[dict]] = {}
        for d in docs:
            by_kind.setdefault(d.get("kind"), []).append(d)
        config_maps = {d["metadata"]["name"]: d.get("data") or {} for d in by_kind.get("ConfigMap", [])}
        secrets = {d["metadata"]["name"]: d for d in by_kind.get("Secret", [])}
        if secrets and not generates_secret:
            self.problem(where, f"contains Secret/{next(iter(secrets))}: secrets are referenced (secretKeyRef), "
                                "never part of the manifests; only a secretGenerator over a gitignored file may "
                                "make one")
        for name, data in config_maps.items():
            for key in sorted(SECRET_VARS & set(data)):
                self.problem(where, f"ConfigMap/{name} holds {key}: secrets belong in the Secret")
        deployments = {d["metadata"]["name"]: d for d in by_kind.get("Deployment", [])}
        for required in ("instantchat-ingest", "instantchat-gateway"):
            if required not in deployments:
                self.problem(where, f"no Deployment {required}")
        hpas = by_kind.get("HorizontalPodAutoscaler", [])
        pdbs = by_kind.get("PodDisruptionBudget", [])
        services = {d["metadata"]["name"]: d for d in by_kind.get("Service", [])}

        for name, dep in deployments.items():
            service = "gateway" if "gateway" in name else "ingest"
            dwhere = f"{where}: Deployment/{name}"
            pod = dep["spec"]["template"]
            spec = pod["spec"]
            labels = pod["metadata"].get("labels") or {}
            grace = spec.get("terminationGracePeriodSeconds", 30)
            if not (spec.get("securityContext") or {}).get("runAsNonRoot"):
                self.problem(dwhere, "pod securityContext.runAsNonRoot is not true")
            annotations = pod["metadata"].get("annotations") or {}
            monitored = annotations.get("prometheus.io/scrape") == "true" or any(
                _selects_service(sm, services, labels) for sm in by_kind.get("ServiceMonitor", []))
            if not monitored:
                self.problem(dwhere, "neither prometheus.io/scrape annotations nor a ServiceMonitor")
            container_ports = set()
            for c in spec.get("containers") or []:
                cwhere = f"{dwhere} container {c.get('name')}"
                ports = {p.get("name"): p.get("containerPort") for p in c.get("ports") or []}
                container_ports |= set(ports) | set(ports.values())
                res = c.get("resources") or {}
                for section in ("requests", "limits"):
                    for r in ("cpu", "memory"):
                        if r not in (res.get(section) or {}):
                            self.problem(cwhere, f"no resources.{section}.{r}")
                for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                    got = ((c.get(probe) or {}).get("httpGet") or {}).get("path")
                    if got != path:
                        self.problem(cwhere, f"{probe} should GET {path} (has {got})")
                    port = ((c.get(probe) or {}).get("httpGet") or {}).get("port")
                    if port is not None and port not in ports and port not in ports.values():
                        self.problem(cwhere, f"{probe} port {port} is not a container port")
                pre = ((c.get("lifecycle") or {}).get("preStop") or {})
                sleep = _prestop_seconds(pre)
                if sleep is None:
                    self.problem(cwhere, "no preStop sleep (endpoints must update before SIGTERM)")
                    sleep = 0
                env = {e["name"]: e for e in c.get("env") or []}
                names = set(env)
                drain = None
                for src in c.get("envFrom") or []:
                    ref = (src.get("configMapRef") or {}).get("name")
                    if ref is not None:
                        if ref not in config_maps:
                            self.problem(cwhere, f"envFrom ConfigMap {ref} is not in the manifests")
                        else:
                            names |= set(config_maps[ref])
                            drain = config_maps[ref].get("SHUTDOWN_TIMEOUT_SECS", drain)
                    if "secretRef" in src:
                        self.problem(cwhere, "envFrom secretRef: reference each secret with secretKeyRef")
                if "SHUTDOWN_TIMEOUT_SECS" in env and "value" in env["SHUTDOWN_TIMEOUT_SECS"]:
                    drain = env["SHUTDOWN_TIMEOUT_SECS"]["value"]
                drain = int(drain) if drain is not None else DEFAULT_DRAIN_SECS
                if grace <= sleep + drain:
                    self.problem(dwhere, f"terminationGracePeriodSeconds {grace} must exceed preStop "
                                         f"{sleep}s + drain {drain}s")
                # Names only there to be put into another value ($(VAR) expansion), e.g. a password
                # into NATS_URL, are no settings of the binary.
                referenced = set(re.findall(r"\$\((\w+)\)", " ".join(str(e.get("value", "")) for e in env.values())))
                self.check_env_names(cwhere, service, names - referenced)
                url = str((env.get("NATS_URL") or {}).get("value", ""))
                m = re.match(r"nats://([^:@/]+):\$\((\w+)\)@", url)
                if not m:
                    self.problem(cwhere, "NATS_URL must log in as the service's NATS user, its password "
                                         "from the Secret: nats://USER:$(PASSWORD_VAR)@HOST:4222")
                elif m.group(1) != NATS_USERS[service]:
                    self.problem(cwhere, f"NATS_URL logs in as `{m.group(1)}`, not `{NATS_USERS[service]}`")
                elif list(env).index(m.group(2)) > list(env).index("NATS_URL") if m.group(2) in env else True:
                    self.problem(cwhere, f"NATS_URL uses $({m.group(2)}), which is not an env var defined before it")
                for var in sorted(SECRET_VARS & names):
                    e = env.get(var)
                    ref = ((e or {}).get("valueFrom") or {}).get("secretKeyRef")
                    if ref is None:
                        self.problem(cwhere, f"{var} must come from a Secret via secretKeyRef")
                        continue
                    if ref.get("name") in secrets:
                        keys = set((secrets[ref["name"]].get("data") or {})) | set(
                            (secrets[ref["name"]].get("stringData") or {}))
                        if ref.get("key") not in keys:
                            self.problem(cwhere, f"{var}: Secret {ref['name']} has no key {ref.get('key')}")
                    elif ref.get("name") != "instantchat-secrets":
                        self.problem(cwhere, f"{var}: Secret {ref.get('name')} is neither generated here "
                                             "nor instantchat-secrets (base/secret.example.yaml)")
                    elif secret_keys and ref.get("key") not in secret_keys:
                        self.problem(cwhere, f"{var}: key {ref.get('key')} is not in base/secret.example.yaml")
                required = {"ingest": {"INSTAGRAM_APP_SECRET", "NATS_URL"},
                            "gateway": {"JWT_SECRET", "NATS_URL"}}[service]
                for var in sorted(required - names):
                    self.problem(cwhere, f"{var} is not set")
            if not any(_selects(p["spec"].get("selector"), labels) for p in pdbs):
                self.problem(dwhere, "no PodDisruptionBudget selects its pods")
            if service == "gateway":
                hpa = next((h for h in hpas if h["spec"]["scaleTargetRef"].get("name") == name
                            and h["spec"]["scaleTargetRef"].get("kind") == "Deployment"), None)
                if hpa is None:
                    self.problem(dwhere, "no HorizontalPodAutoscaler scales it")
                else:
                    hwhere = f"{where}: HorizontalPodAutoscaler/{hpa['metadata']['name']}"
                    if hpa["apiVersion"] != "autoscaling/v2":
                        self.problem(hwhere, "use autoscaling/v2")
                    if dep["spec"].get("replicas") is not None:
                        self.problem(dwhere, "sets spec.replicas although the HPA owns them "
                                             "(every apply would reset the scale)")
                    if hpa["spec"].get("minReplicas", 1) < 2:
                        self.problem(hwhere, "minReplicas below 2: one gateway is a single point of failure")
                    down = (hpa["spec"].get("behavior") or {}).get("scaleDown") or {}
                    if down.get("stabilizationWindowSeconds", 300) < 300 or not down.get("policies"):
                        self.problem(hwhere, "scale-down must be slow: stabilizationWindowSeconds >= 300 "
                                             "and policies that remove few pods per period")
            for sname, svc in services.items():
                if _selects({"matchLabels": svc["spec"].get("selector") or {}}, labels):
                    for p in svc["spec"].get("ports") or []:
                        tp = p.get("targetPort", p.get("port"))
                        if tp not in container_ports:
                            self.problem(f"{where}: Service/{sname}", f"targetPort {tp} is not a port of {name}")
        for sname, svc in services.items():
            if not any(_selects({"matchLabels": svc["spec"].get("selector") or {}},
                                d["spec"]["template"]["metadata"].get("labels") or {})
                       for d in deployments.values()):
                self.problem(f"{where}: Service/{sname}", "selects no Deployment's pods")
        routes = by_kind.get("HTTPRoute", [])
        if not routes:
            self.problem(where, "no HTTPRoute")
        paths = {}
        for route in routes:
            for rule in route["spec"].get("rules") or []:
                for ref in rule.get("backendRefs") or []:
                    svc = services.get(ref.get("name"))
                    if svc is None:
                        self.problem(f"{where}: HTTPRoute/{route['metadata']['name']}",
                                     f"backend {ref.get('name')} is not a Service here")
                    elif ref.get("port") not in {p.get("port") for p in svc["spec"].get("ports") or []}:
                        self.problem(f"{where}: HTTPRoute/{route['metadata']['name']}",
                                     f"backend {ref.get('name')} has no port {ref.get('port')}")
                    for m in rule.get("matches") or []:
                        paths[(m.get("path") or {}).get("value")] = (ref.get("name"), rule)
        if routes:
            if (paths.get("/api/webhooks/instagram") or (None,))[0] != "instantchat-ingest":
                self.problem(where, "no HTTPRoute rule sends /api/webhooks/instagram to instantchat-ingest")
            sio = paths.get("/socket.io")
            if (sio or (None,))[0] != "instantchat-gateway":
                self.problem(where, "no HTTPRoute rule sends /socket.io to instantchat-gateway")
        self.check_route_tls(where, routes, by_kind.get("Gateway", []))
        for sm in by_kind.get("ServiceMonitor", []):
            selectable = [k for k in (sm["metadata"].get("labels") or {}) if not k.startswith("app.kubernetes.io/")]
            if not selectable:
                self.problem(f"{where}: ServiceMonitor/{sm['metadata']['name']}",
                             "no label a Prometheus' serviceMonitorSelector would select (e.g. kube-prometheus-"
                             "stack's `release: <its release name>`); without one it is silently ignored")

    def check_route_tls(self, where: str, routes: list[dict], gateways: list[dict]) -> None:
        """Routes to the services only on HTTPS listeners; plain HTTP only redirects to HTTPS."""
        listeners = {(g["metadata"]["name"], l.get("name")): l
                     for g in gateways for l in (g.get("spec") or {}).get("listeners") or []}
        for g in gateways:
            for l in (g.get("spec") or {}).get("listeners") or []:
                if l.get("protocol") == "HTTPS" and not ((l.get("tls") or {}).get("certificateRefs")):
                    self.problem(f"{where}: Gateway/{g['metadata']['name']}",
                                 f"listener {l.get('name')} is HTTPS without a certificate")
        for route in routes:
            rwhere = f"{where}: HTTPRoute/{route['metadata']['name']}"
            rules = route["spec"].get("rules") or []
            serves = any(rule.get("backendRefs") for rule in rules)
            for ref in route["spec"].get("parentRefs") or []:
                section = ref.get("sectionName")
                if section is None:
                    self.problem(rwhere, f"parentRef {ref.get('name')} has no sectionName: the route attaches to "
                                         "every listener of the Gateway, plain HTTP included")
                    continue
                listener = listeners.get((ref.get("name"), section)) if not ref.get("namespace") else None
                if listener is not None:
                    https = listener.get("protocol") == "HTTPS"
                elif any(g["metadata"]["name"] == ref.get("name") for g in gateways) and not ref.get("namespace"):
                    self.problem(rwhere, f"Gateway {ref.get('name')} has no listener {section}")
                    continue
                else:
                    # A Gateway managed elsewhere: its listener names say which is which.
                    https = "https" in section.lower()
                if serves and not https:
                    self.problem(rwhere, f"sends traffic to the services on listener {section}, which is not "
                                         "HTTPS: tokens and webhooks would travel unencrypted")
            if not serves:
                for rule in rules:
                    redirect = [f.get("requestRedirect") or {} for f in rule.get("filters") or []
                                if f.get("type") == "RequestRedirect"]
                    if not redirect or redirect[0].get("scheme") != "https":
                        self.problem(rwhere, "a route without backends should only redirect to https")

    # ---------------------------------------------------------------- NATS values

    def check_nats_values(self) -> None:
        where = "deploy/nats/values.yaml"
        values = self.load_yaml(self.root / where)
        if not isinstance(values, dict):
            if values is not None:
                self.problem(where, "not a mapping")
            return
        js = (values.get("config") or {}).get("jetstream") or {}
        if js.get("enabled") is not True:
            self.problem(where, "config.jetstream.enabled is not true")
        fs = js.get("fileStore") or {}
        if fs.get("enabled") is False or (fs.get("pvc") or {}).get("enabled") is False:
            self.problem(where, "JetStream must keep its file store on a persistent volume")
        cluster = (values.get("config") or {}).get("cluster") or {}
        if cluster.get("enabled") and int(cluster.get("replicas", 3)) % 2 == 0:
            self.problem(where, "config.cluster.replicas should be odd (JetStream quorum)")
        container = values.get("container") or {}
        env = container.get("env") or {}
        # The chart's advice: requests equal to limits, at least 2 CPUs and 8Gi for production
        # JetStream, and GOMEMLIMIT near 80 % of the memory limit.
        res = ((container.get("merge") or {}).get("resources") or container.get("resources") or {})
        req, lim = res.get("requests") or {}, res.get("limits") or {}
        if req != lim or not req:
            self.problem(where, "container resources: set requests equal to limits (the chart's advice)")
        if _cpu(lim.get("cpu")) < 2 or _bytes(lim.get("memory")) < 8 * 2**30:
            self.problem(where, "container resources below the chart's recommended minimum (2 CPU, 8Gi)")
        gomem = _bytes(str(env.get("GOMEMLIMIT", "0")).replace("iB", "i").replace("B", ""))
        if not 0.6 * _bytes(lim.get("memory")) <= gomem <= 0.9 * _bytes(lim.get("memory") or "0"):
            self.problem(where, "container.env.GOMEMLIMIT should be about 80% of the memory limit")
        # Users: passwords from the environment (a Secret), ingest's and the gateway's permissions
        # exactly those of deploy/compose/nats.conf, which the e2e suite runs the services with.
        users = {u.get("user"): u for u in (((values.get("config") or {}).get("merge") or {})
                                            .get("authorization") or {}).get("users") or []}
        compose_users = self.nats_conf_permissions() or {}
        for name in NATS_USERS.values():
            user = users.get(name)
            if user is None:
                self.problem(where, f"no NATS user `{name}` in config.merge.authorization.users")
                continue
            m = re.fullmatch(r"<<\s*\$(\w+)\s*>>", str(user.get("password", "")))
            ref = ((env.get(m.group(1)) if m else None) or {})
            if not m or not isinstance(ref, dict) or "secretKeyRef" not in (ref.get("valueFrom") or {}):
                self.problem(where, f"user {name}: the password must be << $VAR >> with VAR in container.env "
                                    "from a secretKeyRef")
            perms = user.get("permissions") or {}
            got = {kind: sorted((perms.get(kind) or {}).get("allow") or []) for kind in ("publish", "subscribe")}
            if name in compose_users and got != compose_users[name]:
                self.problem(where, f"user {name}: permissions differ from deploy/compose/nats.conf's "
                                    f"(which the e2e suite checks): {got} vs {compose_users[name]}")
        # The NetworkPolicy shipped with the chart (extraResources): only ingest and gateways.
        policies = [r for r in values.get("extraResources") or [] if r.get("kind") == "NetworkPolicy"]
        self.validate_objects(where, policies)
        allowed = set()
        for pol in policies:
            for rule in (pol.get("spec") or {}).get("ingress") or []:
                if 4222 not in {p.get("port") for p in rule.get("ports") or []}:
                    continue
                for peer in rule.get("from") or [{}]:
                    pods = peer.get("podSelector") or {}
                    names = set((pods.get("matchLabels") or {}).get("app.kubernetes.io/name", "").split()) | {
                        v for e in pods.get("matchExpressions") or [] if e.get("key") == "app.kubernetes.io/name"
                        for v in e.get("values") or []}
                    if not names:
                        self.problem(where, "NetworkPolicy: a rule admits any pod to the client port 4222")
                    allowed |= names
        if not policies:
            self.problem(where, "no NetworkPolicy (extraResources): any pod could reach NATS")
        elif not {"instantchat-ingest", "instantchat-gateway"} <= allowed or \
                allowed - {"instantchat-ingest", "instantchat-gateway", "nats"}:
            self.problem(where, f"NetworkPolicy: port 4222 should admit ingest, gateways (and NATS itself) only; "
                                f"admits {sorted(allowed)}")

    # ---------------------------------------------------------------- CRDs (node)

    def check_gateway_api(self) -> None:
        """HTTPRoute and Gateway against the current Gateway API's schemas (deploy/tools/
        gateway-api.schema.json), strictly: a field the API does not have (any more) is refused, as
        a current API server with strict field validation refuses it."""
        import jsonschema

        bundle = json.loads((self.root / "deploy/tools/gateway-api.schema.json").read_text())
        version = bundle["gatewayApiVersion"]
        for r in self.crd_resources:
            doc = r["doc"]
            key = f"{doc.get('apiVersion')}/{doc.get('kind')}"
            if not key.startswith("gateway.networking.k8s.io/"):
                continue
            schema = bundle["schemas"].get(key)
            label = f"{r['where']}: {doc.get('kind')}/{(doc.get('metadata') or {}).get('name', '?')}"
            if schema is None:
                self.problem(label, f"no schema for {key} in Gateway API {version}")
                continue
            body = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind", "metadata")}
            for error in jsonschema.Draft7Validator(_strict(schema)).iter_errors(body):
                path = "/".join(str(p) for p in error.absolute_path) or "(top level)"
                self.problem(label, f"{path}: {error.message} (Gateway API {version})")

    def check_crds(self) -> None:
        self.check_gateway_api()
        if not self.crd_resources:
            return
        node_dir = self.tools / "node"
        inputs = node_dir / "resources.json"
        inputs.write_text(json.dumps(self.crd_resources))
        # Run from the installed packages' directory, so the script's imports resolve there.
        shutil.copy(self.root / "deploy/tools/validate-crds.mjs", node_dir / "validate-crds.mjs")
        result = subprocess.run(["node", "validate-crds.mjs", str(inputs)],
                                cwd=self.tools / "node", capture_output=True, text=True)
        for line in (result.stdout + result.stderr).splitlines():
            if line.strip():
                self.problems.append(line)
        if result.returncode != 0 and not (result.stdout + result.stderr).strip():
            self.problems.append(f"validate-crds.mjs failed with exit code {result.returncode}")

    # ---------------------------------------------------------------- helpers

    def run_tool(self, what: str, cmd: list[str]) -> None:
        result = subprocess.run(cmd, capture_output=True, text=True, cwd=self.root)
        if result.returncode != 0:
            out = (result.stdout + result.stderr).strip().replace(str(self.root) + "/", "")
            self.problems.append(f"{what}:\n    " + out.replace("\n", "\n    "))

    def run(self, parts: set[str] | None = None) -> list[str]:
        """Every check, or only `parts` of them ("docker", "k8s", "nats")."""
        parts = parts or {"docker", "k8s", "nats"}
        stages: set[str] = set()

        def step(what, fn, *args):
            # A file broken in a way a check did not foresee is still reported, not a traceback.
            try:
                return fn(*args)
            except Exception as e:  # noqa: BLE001
                self.problem(what, f"could not be checked ({type(e).__name__}: {e}); is it well-formed?")
                return None

        if "docker" in parts:
            stages = step("Dockerfile", self.check_dockerfile) or set()
            step("docker-compose.yml", self.check_compose, stages)
        if "k8s" in parts:
            step("deploy/k8s", self.check_k8s)
        if "nats" in parts:
            step("deploy/nats/values.yaml", self.check_nats_values)
        if "k8s" in parts:
            step("deploy/k8s (custom resources)", self.check_crds)
        return self.problems


def _strict(schema):
    """A CRD's structural schema with unknown fields refused (additionalProperties: false where
    the schema lists properties and does not keep unknown fields), and int-or-string allowed."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items() if not k.startswith("x-kubernetes")}
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields") \
            and "additionalProperties" not in schema:
        out["additionalProperties"] = False
    return out


def _cpu(value) -> float:
    text = str(value or "0")
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def _bytes(value) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]i?)?", str(value or "0").strip())
    if not m:
        return 0
    unit = {"": 1, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30,
            "Ti": 2**40}[m.group(2) or ""]
    return float(m.group(1)) * unit


def parse_seconds(value: str) -> float | None:
    total, matched = 0.0, False
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", value):
        matched = True
        total += float(number) * {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}[unit]
    return total if matched else None


def _prestop_seconds(pre: dict) -> int | None:
    if "sleep" in pre:
        return int(pre["sleep"].get("seconds", 0))
    cmd = (pre.get("exec") or {}).get("command") or []
    text = " ".join(str(c) for c in cmd)
    m = re.search(r"\bsleep\s+(\d+)", text)
    return int(m.group(1)) if m else None


def _selects(selector: dict | None, labels: dict) -> bool:
    if not selector:
        return False
    match = selector.get("matchLabels") or {}
    if not match and not selector.get("matchExpressions"):
        return False
    if any(labels.get(k) != v for k, v in match.items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        value = labels.get(expr["key"])
        op = expr["operator"]
        if op == "In" and value not in expr.get("values", []):
            return False
        if op == "NotIn" and value in expr.get("values", []):
            return False
        if op == "Exists" and value is None:
            return False
        if op == "DoesNotExist" and value is not None:
            return False
    return True


def _selects_service(monitor: dict, services: dict, pod_labels: dict) -> bool:
    for svc in services.values():
        if _selects(monitor["spec"].get("selector"), svc["metadata"].get("labels") or {}) and \
                _selects({"matchLabels": svc["spec"].get("selector") or {}}, pod_labels):
            return True
    return False


# ---------------------------------------------------------------- self-test

MUTATIONS = [
    # (description, file, old, new, expected substring of a problem)
    ("unknown field in a Deployment", "deploy/k8s/base/gateway-deployment.yaml",
     "          imagePullPolicy: IfNotPresent\n", "          imagePullPolicy: IfNotPresent\n          restartPolicyy: Always\n",
     "restartPolicyy"),
    ("wrong type in a Service", "deploy/k8s/base/ingest-service.yaml", "port: 8080", "port: eighty",
     "Service/instantchat-ingest"),
    ("misspelt HTTPRoute field", "deploy/k8s/base/httproute.yaml", "backendRefs:\n        - name: instantchat-gateway",
     "backendRef:\n        - name: instantchat-gateway", "backendRef"),
    ("a field removed from Gateway API (sessionPersistence.idleTimeout, gone in 1.6)",
     "deploy/k8s/base/httproute.yaml", "      timeouts:\n",
     "      sessionPersistence:\n        sessionName: sio\n        idleTimeout: 1h\n      timeouts:\n",
     "idleTimeout"),
    ("route without its HTTPS listener", "deploy/k8s/base/httproute.yaml", "      sectionName: https\n", "",
     "no sectionName"),
    ("route on the plain-HTTP listener", "deploy/k8s/overlays/dev/kustomization.yaml",
     "            sectionName: https\n", "            sectionName: http\n", "not HTTPS"),
    ("HTTPS listener without a certificate", "deploy/k8s/overlays/dev/gateway.yaml",
     "        certificateRefs:\n          - kind: Secret\n            name: instantchat-tls\n", "",
     "without a certificate"),
    ("ServiceMonitor no Prometheus selects", "deploy/k8s/components/servicemonitor/servicemonitor.yaml",
     "    release: kube-prometheus-stack\n", "", "serviceMonitorSelector"),
    ("NATS_URL without the service's user", "deploy/k8s/base/gateway-deployment.yaml",
     "value: nats://gateway:$(NATS_GATEWAY_PASSWORD)@", "value: nats://", "NATS_URL must log in"),
    ("a value in secret.example.yaml", "deploy/k8s/base/secret.example.yaml", 'JWT_SECRET: ""',
     'JWT_SECRET: "change-me-to-a-long-random-string"', "has a value"),
    ("secret in the base", "deploy/k8s/base/kustomization.yaml", "  - httproute.yaml\n",
     "  - httproute.yaml\n  - secret.example.yaml\n", "secret.example.yaml"),
    ("grace period below the drain", "deploy/k8s/base/gateway-deployment.yaml",
     "terminationGracePeriodSeconds: 30", "terminationGracePeriodSeconds: 12", "terminationGracePeriodSeconds"),
    ("fast HPA scale-down", "deploy/k8s/base/gateway-hpa.yaml", "stabilizationWindowSeconds: 600",
     "stabilizationWindowSeconds: 30", "scale-down must be slow"),
    ("missing kustomize resource", "deploy/k8s/base/kustomization.yaml", "  - ingest-pdb.yaml\n",
     "  - ingest-pdb.yaml\n  - nowhere.yaml\n", "nowhere.yaml"),
    ("unknown env var", "deploy/k8s/base/kustomization.yaml", "      - ACCOUNT_ACCESS=claim\n",
     "      - ACCOUNT_ACCES=claim\n", "ACCOUNT_ACCES"),
    ("Compose schema", "docker-compose.yml", "    restart: unless-stopped\n\n  ingest:",
     "    restartt: unless-stopped\n\n  ingest:", "Compose specification"),
    ("Compose env without .env.example", "docker-compose.yml", "${JWT_SECRET:-}", "${JWT_SECRETS:-}",
     "JWT_SECRETS"),
    ("required Compose variable (compose down fails without .env)", "docker-compose.yml", "${JWT_SECRET:-}",
     "${JWT_SECRET:?set JWT_SECRET in .env}", "required variable"),
    ("a secret in .env.example", ".env.example", "\nJWT_SECRET=\n", "\nJWT_SECRET=change-me\n", ".env.example"),
    ("gateways trusting a private range", "docker-compose.yml", "TRUSTED_PROXIES: ${LB_ADDRESS:-172.28.57.10}",
     "TRUSTED_PROXIES: 10.0.0.0/8,172.16.0.0/12,192.168.0.0/16", "TRUSTED_PROXIES"),
    ("no open-files limit in compose", "docker-compose.yml", "      - \"3000\"\n    ulimits: *nofile\n",
     "      - \"3000\"\n", "ulimits"),
    ("ingest on the gateway's NATS user", "docker-compose.yml", "nats://ingest:${NATS_INGEST_PASSWORD:-}@",
     "nats://gateway:${NATS_GATEWAY_PASSWORD:-}@", "not as the"),
    ("nginx appending to the client's X-Forwarded-For", "deploy/compose/nginx.conf",
     "proxy_set_header X-Forwarded-For $remote_addr;", "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
     "X-Forwarded-For must be"),
    ("nginx trusting a wide range", "deploy/compose/nginx.conf", "  real_ip_header X-Forwarded-For;",
     "  set_real_ip_from 172.16.0.0/12;\n  real_ip_header X-Forwarded-For;", "set_real_ip_from"),
    ("nginx workers at the soft limit", "deploy/compose/nginx.conf", "worker_rlimit_nofile 65536;", "",
     "worker_rlimit_nofile"),
    ("an image that builds every binary", "Dockerfile", "-p instantchat-gateway --bin instantchat-gateway",
     "--bins", "must build only"),
    ("NATS permissions out of step with compose's", "deploy/nats/values.yaml",
     "                - $JS.API.STREAM.INFO.INSTANTCHAT_WEBHOOKS\n", "", "permissions differ"),
    ("NATS open to other pods", "deploy/nats/values.yaml", "values: [instantchat-ingest, instantchat-gateway]",
     "values: [instantchat-ingest, instantchat-gateway, debug-shell]", "admits"),
    ("NATS without GOMEMLIMIT", "deploy/nats/values.yaml", "    GOMEMLIMIT: 6GiB\n", "", "GOMEMLIMIT"),
    ("NATS below the chart's recommendation", "deploy/nats/values.yaml", "        cpu: \"2\"\n        memory: 8Gi\n      limits:",
     "        cpu: 250m\n        memory: 512Mi\n      limits:", "requests equal to limits"),
    ("gateway host port", "docker-compose.yml", "    expose:\n      - \"3000\"\n",
     "    ports:\n      - \"3000:3000\"\n", "publishes host ports"),
    ("nginx without re-resolution", "deploy/compose/nginx.conf", "server gateway:3000 resolve", "server gateway:3000",
     "without `resolve`"),
    ("Dockerfile lint", "Dockerfile", "WORKDIR /src\n", "WORKDIR src\n", "hadolint"),
    ("runtime as root", "Dockerfile", "USER 10001:10001\n", "", "runs as root"),
    ("patched dependency not copied", "Dockerfile", "COPY vendor vendor\n", "", "does not COPY `vendor`"),
    ("NATS without JetStream", "deploy/nats/values.yaml", "  jetstream:\n    enabled: true",
     "  jetstream:\n    enabled: false", "jetstream"),
]


def self_test(root: Path, tools: Path) -> int:
    failures = []
    with tempfile.TemporaryDirectory(prefix="validate-deploy-selftest-") as tmp:
        for description, rel, old, new, expected in MUTATIONS:
            work = Path(tmp) / "root"
            if work.exists():
                shutil.rmtree(work)
            work.mkdir()
            for name in ("Dockerfile", "docker-compose.yml", ".env.example"):
                shutil.copy(root / name, work / name)
            shutil.copytree(root / "deploy", work / "deploy", ignore=shutil.ignore_patterns("node_modules"))
            for name in ("Cargo.toml", "Cargo.lock", "crates", "vendor", "proto", "web"):
                if (root / name).exists():
                    (work / name).symlink_to(root / name)
            target = work / rel
            text = target.read_text()
            if old not in text:
                failures.append(f"self-test `{description}`: cannot apply (text not found in {rel})")
                continue
            target.write_text(text.replace(old, new, 1))
            # Only the checks that read the broken file (the full run above covered the rest).
            parts = {"k8s"} if rel.startswith("deploy/k8s/") else {"nats"} if rel.startswith("deploy/nats/") \
                else {"docker", "nats"}
            problems = Checker(work, tools).run(parts)
            if not any(expected in p for p in problems):
                failures.append(f"self-test `{description}`: not caught (expected a problem mentioning "
                                f"`{expected}`; got {problems or 'none'})")
    for f in failures:
        print(f)
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--tools", type=Path, required=True)
    parser.add_argument("--self-test", action="store_true",
                        help="also break copies of the files in known ways and check each is caught")
    args = parser.parse_args()
    root = args.root.resolve()
    problems = Checker(root, args.tools.resolve()).run()
    for p in problems:
        print(p)
    if problems:
        print(f"validate-deploy: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    if args.self_test:
        return self_test(root, args.tools.resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
