"""The deployment files, checked without a Docker engine.

docker-compose.yml: parsed with PyYAML plus our own checks of what an engine would only
find out at `up` time (references between services, volumes, healthchecks, secrets,
build contexts, bind-mounted files). When a `docker-compose` binary is on PATH it also
validates the file (`config -q`); otherwise that single test is skipped.

dvc.yaml: every interpolated parameter exists in params.yaml, every stage runs a real
`dlvm` subcommand with options that subcommand has, writes the summary DVC tracks, and
the stages form a proper DAG; DVC itself parses the pipeline too.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DVC_FILE = ROOT / "dvc.yaml"
PARAMS_FILE = ROOT / "params.yaml"

EXPECTED_SERVICES = {"postgres", "minio", "minio-init", "prefect-server", "prefect-worker", "label-studio",
                     "dlvm-feedback", "dlvm-webhook", "prefect-init", "dlvm-ui"}
ONE_SHOT = {"minio-init", "prefect-init"}  # runs to completion; everything else is long-running
LONG_RUNNING_RESTART = {"always", "unless-stopped", "on-failure"}
SECRET_KEY = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY")
# Environment keys that match SECRET_KEY but are switches, not secrets (value must be a boolean).
NOT_SECRETS = {"LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN"}
# Secrets whose absence is a choice (empty = the feature is off), never a default value.
OPTIONAL_SECRETS = {"DLVM_API_READ_TOKEN"}
REQUIRED_VAR = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*:\?[^}]+\}")
# Compose interpolation: $$ (a literal $), ${NAME}, ${NAME:-x}, ${NAME-x}, ${NAME:?x}, ${NAME?x}, $NAME.
INTERPOLATION = re.compile(r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")


# ------------------------------------------------------------------------------ helpers


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML keeps the last of two equal keys silently; an engine's parser refuses them."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise AssertionError(f"duplicate key {key!r} at line {key_node.start_mark.line + 1}")
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_compose(path: Path = COMPOSE_FILE) -> dict:
    doc = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    assert isinstance(doc, dict) and isinstance(doc.get("services"), dict), f"{path}: no services mapping"
    return doc


def strings(node):
    """Every string (keys and values) in a parsed YAML document."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from strings(key)
            yield from strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings(item)


def variables(text: str):
    """(name, operator, argument) for each compose variable reference in ``text``."""
    for m in INTERPOLATION.finditer(text):
        if m.group(1):  # $$ escape
            continue
        if m.group(2):
            yield m.group(2), m.group(3) or "", m.group(4) or ""
        else:
            yield m.group(5), "", ""


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # ["KEY=value", ...]
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return {str(k): (None if v is None else str(v)) for k, v in env.items()}


def depends_on(service: dict) -> dict:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):  # short form: no conditions at all
        return {name: {} for name in deps}
    return deps


def volume_mounts(service: dict):
    """(source, target) of each mount; source None for anonymous volumes."""
    for entry in service.get("volumes") or []:
        if isinstance(entry, dict):
            yield entry.get("source"), entry.get("target")
        else:
            parts = entry.split(":")
            yield (parts[0], parts[1]) if len(parts) > 1 else (None, parts[0])


def is_bind(source: str) -> bool:
    return source.startswith((".", "/", "~"))


def has_healthcheck(service: dict) -> bool:
    check = service.get("healthcheck") or {}
    test = check.get("test")
    return bool(test) and not check.get("disable") and test not in (["NONE"], "NONE")


def env_example_names() -> set[str]:
    names = set()
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            assert "=" in line, f".env.example: not NAME=value: {line!r}"
            names.add(line.split("=", 1)[0].removeprefix("export ").strip())
    return names


def top_level_or(command: str, word: str = "true") -> bool:
    """Whether ``command`` has ``|| word`` outside every parenthesis (masking the whole chain)."""
    depth, i = 0, 0
    while i < len(command):
        ch = command[i]
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif depth == 0 and command.startswith("||", i) and command[i + 2:].split(None, 1)[:1] == [word]:
            return True
        i += 1
    return False


# ----------------------------------------------------------------- compose: structure


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_compose()


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def test_expected_services(services):
    assert EXPECTED_SERVICES <= set(services), f"missing: {EXPECTED_SERVICES - set(services)}"
    for name, service in services.items():
        assert service.get("image") or service.get("build"), f"{name}: neither image nor build"


def test_long_running_services_have_healthcheck_and_restart(services):
    for name, service in services.items():
        if name in ONE_SHOT:
            assert service.get("restart", "no") in ("no", "on-failure"), f"{name}: a one-shot must not restart always"
            continue
        check = service.get("healthcheck")
        assert has_healthcheck(service), f"{name}: no healthcheck with a test command"
        test = check["test"]
        if isinstance(test, list):
            assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1 and all(test[1:]), f"{name}: bad test {test}"
        assert service.get("restart") in LONG_RUNNING_RESTART, f"{name}: restart policy {service.get('restart')!r}"


def test_depends_on_existing_services_with_conditions(services):
    for name, service in services.items():
        for dep, spec in depends_on(service).items():
            assert dep in services, f"{name} depends on unknown service {dep!r}"
            assert dep != name, f"{name} depends on itself"
            condition = (spec or {}).get("condition")
            if dep in ONE_SHOT:
                assert condition == "service_completed_successfully", f"{name} -> {dep}: {condition!r}"
            else:
                assert has_healthcheck(services[dep]), f"{name} waits for {dep}, which has no healthcheck"
                assert condition == "service_healthy", f"{name} -> {dep}: {condition!r}"


def test_depends_on_has_no_cycle(services):
    state: dict[str, str] = {}

    def visit(name, path):
        if state.get(name) == "done":
            return
        assert state.get(name) != "active", f"dependency cycle: {' -> '.join(path + [name])}"
        state[name] = "active"
        for dep in depends_on(services[name]):
            if dep in services:  # unknown names: test_depends_on_existing_services_with_conditions
                visit(dep, path + [name])
        state[name] = "done"

    for name in services:
        visit(name, [])


def test_named_volumes_declared_and_used(compose, services):
    declared = set(compose.get("volumes") or {})
    used = set()
    for name, service in services.items():
        for source, target in volume_mounts(service):
            assert target and target.startswith("/"), f"{name}: mount target {target!r}"
            if source and not is_bind(source):
                assert source in declared, f"{name} uses undeclared volume {source!r}"
                used.add(source)
    assert declared == used, f"declared but unused volumes: {declared - used}"


def test_bind_mounted_files_exist(services):
    binds = [(name, source) for name, service in services.items()
             for source, _ in volume_mounts(service) if source and is_bind(source)]
    assert ("postgres", "./infra/postgres/init.sql") in binds
    for name, source in binds:
        assert source.startswith("./"), f"{name}: bind mount {source!r} outside the project"
        assert (ROOT / source).exists(), f"{name}: bind-mounted {source} does not exist"
    assert "CREATE DATABASE" in (ROOT / "infra/postgres/init.sql").read_text()


def test_published_ports_bind_to_loopback(services):
    seen = 0
    for name, service in services.items():
        for port in service.get("ports") or []:
            seen += 1
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", f"{name}: {port} not bound to 127.0.0.1"
            else:
                assert str(port).startswith("127.0.0.1:") and str(port).count(":") == 2, \
                    f"{name}: port {port!r} not bound to 127.0.0.1"
    assert seen >= 4  # postgres, minio api + console, prefect, label studio


def test_no_hard_coded_secrets(services):
    checked = 0
    for name, service in services.items():
        for key, value in environment(service).items():
            if not SECRET_KEY.search(key):
                continue
            if key in NOT_SECRETS:
                assert value in ("true", "false"), f"{name}: {key} is a switch, got {value!r}"
                continue
            if key in OPTIONAL_SECRETS:
                assert value == f"${{{key}:-}}", f"{name}: optional {key} must default to empty, got {value!r}"
                continue
            checked += 1
            assert value is not None and REQUIRED_VAR.fullmatch(value), \
                f"{name}: {key}={value!r} must be exactly ${{NAME:?message}}"
    assert checked >= 8


def test_secret_variables_are_required_everywhere(compose):
    """Secrets embedded in larger values (database URLs) are required variables too, and no
    URL carries a literal password."""
    for text in strings(compose):
        for name, op, arg in variables(text):
            if name in OPTIONAL_SECRETS:
                assert (op, arg) == (":-", ""), f"optional ${{{name}}} must be ${{{name}:-}} in {text!r}"
            elif SECRET_KEY.search(name):
                assert op == ":?" and arg.strip(), f"${{{name}}} must be ${{{name}:?message}} in {text!r}"
        for password in re.findall(r"://[^/\s:@]+:([^@/\s]+)@", text):
            assert REQUIRED_VAR.fullmatch(password), f"literal password in URL {text!r}"


def test_every_variable_is_in_env_example(compose):
    used = {name for text in strings(compose) for name, _, _ in variables(text)}
    assert {"POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "DLVM_S3_SECRET_KEY"} <= used
    missing = used - env_example_names()
    assert not missing, f"used in docker-compose.yml but not in .env.example: {sorted(missing)}"


def test_env_example_has_no_secret_values():
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            if SECRET_KEY.search(key):
                assert value.strip() == "", f".env.example ships a value for {key}"


def test_ui_serves_the_registry_with_a_required_write_token(services):
    ui = services["dlvm-ui"]
    assert ui["command"][:2] == ["dlvm", "ui"] and "0.0.0.0" in ui["command"]
    assert "/api/health" in " ".join(ui["healthcheck"]["test"])
    env = environment(ui)
    assert env["DLVM_API_TOKEN"].startswith("${DLVM_API_TOKEN:?")
    assert env["DLVM_DATABASE_URL"].startswith("postgresql+psycopg://") and env["DLVM_ARTIFACTS"].startswith("s3://")
    assert ui["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert ui["ports"] == ["127.0.0.1:8000:8000"]


def test_prefect_worker_reserves_gpus(services):
    devices = services["prefect-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in (device.get("capabilities") or []) for device in devices), devices
    for device in devices:
        assert device.get("count") == "all" or device.get("device_ids") or isinstance(device.get("count"), int)


def test_build_contexts_dockerfiles_and_copied_sources_exist(services):
    builds = 0
    for name, service in services.items():
        build = service.get("build")
        if build is None:
            continue
        builds += 1
        if isinstance(build, str):
            build = {"context": build}
        context = ROOT / build.get("context", ".")
        assert context.is_dir(), f"{name}: build context {context} missing"
        dockerfile = context / build.get("dockerfile", "Dockerfile")
        assert dockerfile.is_file(), f"{name}: {dockerfile} missing"
        for line in dockerfile.read_text().splitlines():
            words = line.split()
            if words[:1] in (["COPY"], ["ADD"]) and not any(w.startswith("--from") for w in words):
                for src in [w for w in words[1:-1] if not w.startswith("--")]:
                    assert (context / src).exists(), f"{dockerfile.name}: {line.strip()!r}: {src} missing"
    assert builds >= 1
    assert services["prefect-worker"]["build"]["dockerfile"] == "infra/Dockerfile.cuda"


def test_one_shot_command_is_valid_shell_and_fails_on_errors(services):
    init = services["minio-init"]
    command = init["command"]
    script = command[0] if isinstance(command, list) else command
    # Compose turns $$ into $; the entrypoint is `sh -c`.
    script = script.replace("$$", "$")
    assert init.get("entrypoint") == ["/bin/sh", "-c"]
    assert not top_level_or(script), "`|| true` masks every failure: the one-shot would always 'succeed'"
    sh = shutil.which("sh")
    if sh:
        proc = subprocess.run([sh, "-n", "-c", script], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr


def test_top_level_or_detector():
    assert top_level_or("a && b || true")
    assert not top_level_or("a && (b || true)")
    assert not top_level_or("a || b")


def test_compose_config_with_docker_compose(tmp_path):
    """The real validator, when installed (Debian's docker-compose 1.29)."""
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose not on PATH")
    env_file = tmp_path / ".env"
    env_file.write_text("".join(f"{name}=dummy-{name.lower()}\n" for name in sorted(env_example_names())))
    clean_env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    cmd = [binary, "-f", str(COMPOSE_FILE), "--project-directory", str(tmp_path), "--env-file", str(env_file),
           "config", "-q"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=clean_env, timeout=60)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    # Without the secrets, the required variables stop it.
    empty = tmp_path / "empty.env"
    empty.write_text("")
    proc = subprocess.run(cmd[:-4] + ["--env-file", str(empty), "config", "-q"], capture_output=True, text=True,
                          env=clean_env, timeout=60)
    assert proc.returncode != 0 and "PASSWORD" in proc.stderr + proc.stdout


# ------------------------------------------------------------------------------ dvc.yaml


@pytest.fixture(scope="module")
def pipeline() -> dict:
    doc = yaml.safe_load(DVC_FILE.read_text())
    assert isinstance(doc.get("stages"), dict) and doc["stages"], "dvc.yaml has no stages"
    return doc


@pytest.fixture(scope="module")
def params() -> dict:
    return yaml.safe_load(PARAMS_FILE.read_text())


def out_paths(stage: dict) -> list[str]:
    return [next(iter(out)) if isinstance(out, dict) else out for out in stage.get("outs") or []]


def lookup(params: dict, dotted: str):
    node = params
    for part in dotted.split("."):
        assert isinstance(node, dict) and part in node, f"${{{dotted}}} is not in params.yaml"
        node = node[part]
    return node


def interpolate(text: str, params: dict) -> str:
    return re.sub(r"\$\{\s*([^}\s]+)\s*\}", lambda m: str(lookup(params, m.group(1))), text)


@pytest.fixture(scope="module")
def help_text():
    """`dlvm SUBCOMMAND --help`, cached: (exit code, plain text)."""
    from typer.testing import CliRunner

    from app.cli import app

    runner, cache = CliRunner(), {}

    def get(sub: str):
        if sub not in cache:
            result = runner.invoke(app, [sub, "--help"],
                                   env={"COLUMNS": "240", "NO_COLOR": "1", "TERM": "dumb"})
            cache[sub] = (result.exit_code, re.sub(r"\x1b\[[0-9;]*m", "", result.output))
        return cache[sub]

    return get


def test_interpolated_parameters_exist(pipeline, params):
    refs = [m.group(1) for text in strings(pipeline) for m in re.finditer(r"\$\{\s*([^}\s]+)\s*\}", text)]
    assert refs
    for ref in refs:
        value = lookup(params, ref)
        assert not isinstance(value, (dict, list)), f"${{{ref}}} is not a scalar"


def test_stage_params_sections_exist(pipeline, params):
    for name, stage in pipeline["stages"].items():
        for entry in stage.get("params") or []:
            keys = [entry] if isinstance(entry, str) else [k for spec in entry.values() for k in spec]
            for key in keys:
                lookup(params, key)


def test_stage_commands_are_real_dlvm_subcommands(pipeline, params, help_text):
    for name, stage in pipeline["stages"].items():
        tokens = shlex.split(interpolate(stage["cmd"], params))
        assert tokens[0] == "dlvm" and len(tokens) > 1, f"{name}: cmd must start with `dlvm <subcommand>`"
        sub = tokens[1]
        code, text = help_text(sub)
        assert code == 0, f"{name}: `dlvm {sub}` is not a command of the CLI:\n{text}"
        for token in tokens[2:]:
            if token.startswith("--"):
                option = token.split("=", 1)[0]
                assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text), \
                    f"{name}: `dlvm {sub}` has no option {option}"


def test_help_check_rejects_unknown(help_text):
    assert help_text("no-such-command")[0] != 0
    assert "--no-such-option" not in help_text("ingest")[1]


def test_stage_outs_are_the_summaries(pipeline, params):
    for name, stage in pipeline["stages"].items():
        tokens = shlex.split(interpolate(stage["cmd"], params))
        assert "--summary" in tokens, f"{name}: no --summary"
        summary = tokens[tokens.index("--summary") + 1]
        outs = out_paths(stage)
        assert outs, f"{name}: no outs"
        for out in outs:
            assert out == summary, f"{name}: out {out} is not what --summary writes ({summary})"


def test_stage_deps_are_outputs_of_other_stages(pipeline, params):
    producers: dict[str, str] = {}
    for name, stage in pipeline["stages"].items():
        for out in out_paths(stage):
            assert out not in producers, f"{out} is an output of {producers[out]} and {name}"
            producers[out] = name
    summary_dir = {Path(out).parent for out in producers}
    for name, stage in pipeline["stages"].items():
        for dep in stage.get("deps") or []:
            if "${" in dep:
                lookup(params, dep.strip("${} "))
                continue
            if Path(dep).parent in summary_dir or dep in producers:
                assert dep in producers, f"{name}: dep {dep} is no stage's output"
                assert producers[dep] != name, f"{name} depends on its own output {dep}"
            else:
                assert (ROOT / dep).exists(), f"{name}: dep {dep} neither exists nor is a stage output"
    # Every stage but the first consumes an earlier stage's output: one connected loop.
    consumers = {name for name, stage in pipeline["stages"].items()
                 if any(dep in producers for dep in stage.get("deps") or [])}
    assert consumers == set(pipeline["stages"]) - {"ingest"}


def test_dvc_parses_the_pipeline(tmp_path):
    """DVC's own parser and DAG builder on a copy of dvc.yaml + params.yaml."""
    pytest.importorskip("dvc")
    shutil.copy(DVC_FILE, tmp_path / "dvc.yaml")
    shutil.copy(PARAMS_FILE, tmp_path / "params.yaml")
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "DVC_IGNORE_ISATTY": "1"}

    def dvc(*args):
        proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, f"dvc {' '.join(args)}:\n{proc.stdout}{proc.stderr}"
        return proc.stdout

    dvc("init", "--no-scm", "-q")
    dvc("config", "--local", "core.site_cache_dir", str(tmp_path / "site-cache"))
    listed = {line.split()[0] for line in dvc("stage", "list").splitlines() if line.strip()}
    assert listed == set(yaml.safe_load(DVC_FILE.read_text())["stages"])
    dag = dvc("dag", "--md")
    assert "promote" in dag
