"""deploy/helm/confidence-router rendered by a real helm, with default and other values, and every manifest
it renders validated against the Kubernetes schemas (kubernetes-validate, strict: no unknown fields); the
Prometheus Operator objects, which those schemas lack, are checked by promtool (the rules) and by field."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from policies import load_policy

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "deploy" / "helm" / "confidence-router"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
# The chart's floor (Chart.yaml's kubeVersion: the preStop sleep action) and the newest schemas at hand.
KUBERNETES = ["1.30.0", "1.37.0"]
OPERATOR_KINDS = {"ServiceMonitor", "PrometheusRule"}
Manifest = dict[str, Any]


def helm() -> str:
    found = Path(sys.executable).with_name("helm")
    # Not a skip: `make tools` installs helm into the venv, and the chart must not go unchecked.
    assert found.is_file(), f"helm is missing: run `make tools` (it installs helm at {found})"
    return str(found)


def run_helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm(), *args], capture_output=True, text=True, timeout=120)


def render(*values: str) -> list[Manifest]:
    """`values`: helm's own flags (--set, --set-string, --set-json)."""
    result = run_helm("template", "r", str(CHART), "--namespace", "ai", *values)
    assert result.returncode == 0, result.stderr
    manifests = [m for m in yaml.safe_load_all(result.stdout) if m]
    for manifest in manifests:
        if manifest["kind"] not in OPERATOR_KINDS:
            for version in KUBERNETES:
                kubernetes_validate.validate(manifest, version, strict=True)
    return manifests


def one(manifests: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    [found] = [m for m in manifests if m["kind"] == kind and name in (None, m["metadata"]["name"])]
    return found


def router_container(manifests: list[Manifest]) -> Manifest:
    pod = one(manifests, "Deployment", "r-confidence-router")["spec"]["template"]["spec"]
    [container] = pod["containers"]
    return container


def env(container: Manifest) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container["env"]}


def test_the_default_release_has_what_a_router_needs_and_validates() -> None:
    manifests = render()
    assert sorted(m["kind"] for m in manifests) == [
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Secret",
        "Service",
    ]
    deployment = one(manifests, "Deployment")
    assert "replicas" not in deployment["spec"]  # the autoscaler's to set
    container = router_container(manifests)
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["requests"] == {"cpu": "1", "memory": "2Gi"}
    assert container["envFrom"] == [{"secretRef": {"name": "r-confidence-router"}}]
    hpa = one(manifests, "HorizontalPodAutoscaler")
    assert [metric["resource"]["name"] for metric in hpa["spec"]["metrics"]] == ["cpu"]
    pdb = one(manifests, "PodDisruptionBudget")
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]
    assert one(manifests, "Service")["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert "stringData" not in one(manifests, "Secret")  # no key, no Redis: nothing to keep


@pytest.mark.parametrize(("grace_s", "pause_s", "period_s"), [("30", "5", 40), ("2.5", "0", 8)])
def test_the_termination_grace_period_covers_the_pause_and_the_drain(
    grace_s: str, pause_s: str, period_s: int
) -> None:
    # --set-json: --set reads 2.5 as a string (it parses integers only).
    manifests = render(
        "--set-json", f"shutdown.graceSeconds={grace_s}", "--set", f"shutdown.preStopSleepSeconds={pause_s}"
    )
    pod = one(manifests, "Deployment")["spec"]["template"]["spec"]
    container = router_container(manifests)
    assert env(container)["ROUTER_GRACE_S"] == grace_s
    assert pod["terminationGracePeriodSeconds"] == period_s
    assert ("lifecycle" in container) == (pause_s != "0")


def test_the_policy_is_a_watched_folder_so_a_change_reloads_and_does_not_roll_the_pods() -> None:
    before = render()
    container = router_container(before)
    [mount] = [m for m in container["volumeMounts"] if m["name"] == "policy"]
    assert "subPath" not in mount  # with a subPath the kubelet never updates the file
    assert f"--policy={mount['mountPath']}/policy.yaml" in container["args"]
    assert float(env(container)["ROUTER_WATCH_POLICY_S"]) > 0

    after = render("--set-string", "policy=name: other\\nrules: [{action: refuse}]")
    assert one(after, "ConfigMap") != one(before, "ConfigMap")
    assert one(after, "Deployment") == one(before, "Deployment")
    # Keys are environment variables, read at start: a changed Secret does roll the pods.
    keyed = render("--set", "secret.adminKey=another")
    assert one(keyed, "Deployment") != one(before, "Deployment")


def test_the_default_policy_is_the_built_in_one_with_the_adapter_in_the_image(tmp_path: Path) -> None:
    text = one(render(), "ConfigMap")["data"]["policy.yaml"]
    charted, built_in = yaml.safe_load(text), yaml.safe_load((ROOT / "policies" / "default.yaml").read_text())
    assert Path(charted["scorer"].pop("adapter")).is_absolute()  # the ConfigMap's folder holds no scorer
    built_in["scorer"].pop("adapter")
    assert charted == built_in
    # And the router's own loader takes it, with the adapter where this checkout has it.
    scorer = ROOT / "policies" / "scorers" / "smollm2-head"
    charted["scorer"]["adapter"] = str(scorer)
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(charted))
    assert load_policy(tmp_path / "policy.yaml").scorer.adapter == str(scorer)


def test_a_calibrator_rides_in_the_policy_folder_and_the_policy_names_it(tmp_path: Path) -> None:
    scorer = ROOT / "policies" / "scorers" / "smollm2-head"
    policy = (ROOT / "policies" / "default.yaml").read_text()
    policy = policy.replace(
        "adapter: scorers/smollm2-head", f"adapter: {scorer}\n  calibrator: calibrator.json"
    )
    (tmp_path / "values.yaml").write_text(yaml.safe_dump({"policy": policy}))
    manifests = render(
        "--values", str(tmp_path / "values.yaml"),
        "--set-file", f"policyFiles.calibrator\\.json={scorer / 'calibrator.json'}",
    )  # fmt: skip
    folder = tmp_path / "policy"
    folder.mkdir()
    for name, text in one(manifests, "ConfigMap")["data"].items():  # the files the pod's folder holds
        (folder / name).write_text(text)
    assert sorted(p.name for p in folder.iterdir()) == ["calibrator.json", "policy.yaml"]
    assert load_policy(folder / "policy.yaml").scorer.calibrator == str(folder / "calibrator.json")


def test_the_chart_runs_the_image_as_deploy_docker_builds_it() -> None:
    """The paths and the user the chart relies on, as the Dockerfile gives them."""
    dockerfile = (ROOT / "deploy" / "docker" / "Dockerfile").read_text()
    manifests = render()
    pod = one(manifests, "Deployment")["spec"]["template"]["spec"]
    container = router_container(manifests)
    adapter = yaml.safe_load(one(manifests, "ConfigMap")["data"]["policy.yaml"])["scorer"]["adapter"]
    assert adapter == "/etc/confidence-router/scorers/smollm2-head"
    assert "/etc/confidence-router/scorers" in dockerfile
    assert f"ROUTER_HOME={env(container)['ROUTER_HOME']}" in dockerfile
    assert f"--uid {pod['securityContext']['runAsUser']}" in dockerfile
    assert 'ENTRYPOINT ["router"]' in dockerfile and container["command"] == ["router"]


def test_the_model_cache_is_a_volume_unless_the_model_is_baked_in() -> None:
    claimed = render("--set", "modelCache.existingClaim=models")
    pod = one(claimed, "Deployment")["spec"]["template"]["spec"]
    [cache] = [v for v in pod["volumes"] if v["name"] == "model-cache"]
    assert cache["persistentVolumeClaim"] == {"claimName": "models"}
    baked = render("--set", "modelCache.enabled=false")
    pod = one(baked, "Deployment")["spec"]["template"]["spec"]
    assert "model-cache" not in {v["name"] for v in pod["volumes"]}
    assert "ROUTER_HOME" not in env(router_container(baked))  # the image's own


def test_keys_and_an_external_redis_go_to_the_secret_or_come_from_one() -> None:
    manifests = render(
        "--set", "secret.adminKey=admin-secret",
        "--set", "secret.upstreamKeys.OPENAI_API_KEY=sk-test",
        "--set", "redis.url=redis://redis.example:6379/0",
    )  # fmt: skip
    assert one(manifests, "Secret")["stringData"] == {
        "ROUTER_ADMIN_KEY": "admin-secret",
        "OPENAI_API_KEY": "sk-test",
        "ROUTER_REDIS_URL": "redis://redis.example:6379/0",
    }
    mine = render("--set", "secret.existingSecret=router-keys")
    assert [m for m in mine if m["kind"] == "Secret"] == []
    assert router_container(mine)["envFrom"] == [{"secretRef": {"name": "router-keys"}}]


def test_gpu_values_request_the_device_and_pick_gpu_nodes() -> None:
    manifests = render(
        "--set", "gpu.enabled=true",
        "--set", "gpu.image.repository=confidence-router-cuda",
        "--set", "gpu.nodeSelector.gpu=h100",
        "--set", "nodeSelector.zone=a",
    )  # fmt: skip
    pod = one(manifests, "Deployment")["spec"]["template"]["spec"]
    container = router_container(manifests)
    assert container["resources"]["limits"] == {"memory": "4Gi", "nvidia.com/gpu": 1}
    assert container["image"] == "confidence-router-cuda:0.1.0"
    assert pod["nodeSelector"] == {"gpu": "h100", "zone": "a"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    cpu_only = one(render(), "Deployment")["spec"]["template"]["spec"]
    assert "nodeSelector" not in cpu_only and "tolerations" not in cpu_only


def test_the_in_chart_redis_is_wired_to_the_router_and_kept_apart_from_it() -> None:
    manifests = render("--set", "redis.inChart.enabled=true", "--set", "redis.url=redis://ignored:6379")
    redis = one(manifests, "Deployment", "r-confidence-router-redis")
    service = one(manifests, "Service", "r-confidence-router-redis")
    assert env(router_container(manifests))["ROUTER_REDIS_URL"] == "redis://r-confidence-router-redis:6379/0"
    assert "ROUTER_REDIS_URL" not in (one(manifests, "Secret").get("stringData") or {})
    redis_pod = redis["spec"]["template"]["metadata"]["labels"]
    router_pod = one(manifests, "Deployment", "r-confidence-router")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= redis_pod.items()
    assert not service["spec"]["selector"].items() <= router_pod.items()
    router_selector = one(manifests, "Service", "r-confidence-router")["spec"]["selector"]
    assert not router_selector.items() <= redis_pod.items()


def redis_settings(manifests: list[Manifest]) -> tuple[dict[str, str], Manifest]:
    """The in-chart Redis's command-line settings (--name value) and its pod."""
    pod = one(manifests, "Deployment", "r-confidence-router-redis")["spec"]["template"]["spec"]
    [container] = pod["containers"]
    args = container["args"]
    return {args[i].removeprefix("--"): args[i + 1] for i in range(0, len(args), 2)}, pod


def test_the_in_chart_redis_has_a_bound_a_safe_eviction_policy_and_keeps_keys_on_disk() -> None:
    settings, pod = redis_settings(render("--set", "redis.inChart.enabled=true"))
    # docs/operations.md, "Redis settings": evicts only keys with a TTL, never API keys or spend.
    assert settings["maxmemory-policy"] == "volatile-lru"
    assert settings["maxmemory"] == "192mb"  # 3/4 of its 256Mi limit
    assert settings["appendonly"] == "yes" and settings["appendfsync"] == "everysec"
    assert settings["dir"] == "/data" and settings["save"] == ""
    assert pod["volumes"] == [{"name": "data", "emptyDir": {}}]

    settings, pod = redis_settings(
        render(
            "--set", "redis.inChart.enabled=true",
            "--set", "redis.inChart.persistence.existingClaim=redis-data",
            "--set", "redis.inChart.maxmemory=1gb",
            "--set", "redis.inChart.maxmemoryPolicy=volatile-lfu",
        )
    )  # fmt: skip
    assert settings["maxmemory"] == "1gb" and settings["maxmemory-policy"] == "volatile-lfu"
    assert pod["volumes"] == [{"name": "data", "persistentVolumeClaim": {"claimName": "redis-data"}}]
    assert pod["securityContext"]["fsGroup"] == 999
    settings, _ = redis_settings(
        render("--set", "redis.inChart.enabled=true", "--set", "redis.inChart.persistence.enabled=false")
    )
    assert settings["appendonly"] == "no"


def test_the_queue_depth_metric_joins_cpu_in_the_autoscaler() -> None:
    manifests = render("--set", "autoscaling.queueDepth.enabled=true")
    metrics = one(manifests, "HorizontalPodAutoscaler")["spec"]["metrics"]
    assert metrics[1] == {
        "type": "Pods",
        "pods": {
            "metric": {"name": "router_queue_depth"},
            "target": {"type": "AverageValue", "averageValue": "8"},
        },
    }
    fixed = render("--set", "autoscaling.enabled=false", "--set", "replicaCount=3")
    assert one(fixed, "Deployment")["spec"]["replicas"] == 3
    assert [m for m in fixed if m["kind"] == "HorizontalPodAutoscaler"] == []


def test_the_prometheus_rule_carries_the_projects_alerts(tmp_path: Path) -> None:
    manifests = render("--set", "prometheusRule.enabled=true", "--set", "prometheusRule.labels.release=kps")
    rule = one(manifests, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "kps"
    assert rule["spec"] == yaml.safe_load(ALERTS.read_text())
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump(rule["spec"]))
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: run `make tools`"
    checked = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_service_monitor_scrapes_metrics_with_the_admin_key_when_asked() -> None:
    manifests = render("--set", "serviceMonitor.enabled=true", "--set", "serviceMonitor.authorize=true")
    monitor = one(manifests, "ServiceMonitor")
    service = one(manifests, "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["authorization"] == {
        "type": "Bearer",
        "credentials": {"name": "r-confidence-router", "key": "ROUTER_ADMIN_KEY"},
    }


@pytest.mark.parametrize(
    ("flag", "error"),
    [
        ("replicaCount=two", "at '/replicaCount': got string, want integer"),
        ("shutdown.graceSeconds=-1", "at '/shutdown/graceSeconds': minimum: got -1, want 0"),
        ("watchPolicySeconds=-5", "at '/watchPolicySeconds': minimum: got -5, want 0"),
        ("redis.url=http://cache:6379", "at '/redis/url': 'http://cache:6379' does not match pattern"),
        (
            "redis.inChart.maxmemoryPolicy=allkeys-lru",
            "at '/redis/inChart/maxmemoryPolicy': value must be one of",
        ),
        ("redis.inChart.maxmemory=lots", "at '/redis/inChart/maxmemory': 'lots' does not match pattern"),
        ("secret.upstreamKeys.bad-name=x", "'bad-name' does not match pattern"),
        ("replicas=3", "additional properties 'replicas' not allowed"),
        ("gpu.enabeld=true", "additional properties 'enabeld' not allowed"),
    ],
)
def test_helm_refuses_values_the_schema_does_not_allow(flag: str, error: str) -> None:
    result = run_helm("template", "r", str(CHART), "--set", flag)
    assert result.returncode != 0
    assert error in result.stderr, result.stderr


def test_the_chart_lints_and_packages_the_alerts_file_itself(tmp_path: Path) -> None:
    linted = run_helm("lint", "--strict", str(CHART))
    assert linted.returncode == 0, linted.stdout + linted.stderr
    packaged = run_helm("package", str(CHART), "--destination", str(tmp_path))
    assert packaged.returncode == 0, packaged.stderr
    [archive] = tmp_path.glob("confidence-router-*.tgz")
    with tarfile.open(archive) as tar:
        member = tar.getmember("confidence-router/files/alerts.yml")
        assert member.isfile()  # helm followed the link: the package stands alone
        packed = tar.extractfile(member)
        assert packed is not None
        assert packed.read() == ALERTS.read_bytes()
