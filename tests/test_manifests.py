"""The Kubernetes manifests in ``cluster/``: their fields against the KubeRay API the README names, what
the operator would refuse at run time (schema-valid is not enough), how long each job's cluster
outlives the job, the nightly run's lifetime against its schedule, ServiceAccounts, environment variables.

The field tables and rules below are KubeRay v1.7.0 (github.com/ray-project/kuberay, tag v1.7.0,
commit 59d663aeec13760646da3db9c1cf8cfe883e30b7), read from:

- ``ray-operator/apis/ray/v1/raycronjob_types.go``, ``rayjob_types.go``, ``raycluster_types.go`` (json tags)
  and ``helm-chart/kuberay-operator/crds/ray.io_{raycronjobs,rayjobs,rayclusters}.yaml`` (version v1);
- ``ray-operator/controllers/ray/utils/validation.go`` (``ValidateRayJobSpec``,
  ``validateDeletionConfiguration``, ``validateDeletionRules``, ``ValidateRayClusterSpec``,
  ``ValidateRayCronJobSpec``) and ``utils/constant.go`` (name lengths);
- ``ray-operator/controllers/ray/rayjob_controller.go`` for a run's lifetime: ``Status.StartTime`` is set
  anew for every attempt (``initRayJobStatusIfNeed``), ``activeDeadlineSeconds`` counts from it and a
  run past it is not retried, a retried attempt's cluster is deleted at once, the last one after the
  TTL of ``shutdownAfterJobFinishes`` or of its deletion rule;
- ``ray-operator/controllers/ray/raycronjob_controller.go``: one RayJob per schedule tick, nothing else
  (no concurrency policy, no history limit).
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CLUSTER = ROOT / "cluster"

KUBERAY = "1.7"  # the version of the tables below; the README must name the same
MAX_CLUSTER_TTL_S = 15 * 60  # a finished job's cluster (GPUs) is kept minutes for its logs, not hours


@dataclass(frozen=True)
class Obj:
    """A KubeRay API object: field -> Obj, [Obj] (a list of them) or None (a scalar, a map, or a type outside
    KubeRay's API such as core/v1's PodTemplateSpec, which this test does not check)."""

    fields: dict
    required: frozenset = field(default_factory=frozenset)


HEAD_GROUP = Obj(dict.fromkeys(["enableIngress", "headService", "ingressOptions", "labels", "rayStartParams",
                                "resources", "serviceType", "template"]), frozenset({"template"}))
WORKER_GROUP = Obj(dict.fromkeys(["groupName", "idleTimeoutSeconds", "labels", "maxReplicas", "minReplicas",
                                  "numOfHosts", "priority", "rayStartParams", "replicas", "resources",
                                  "scaleStrategy", "suspend", "template"]),
                   frozenset({"groupName", "maxReplicas", "minReplicas", "template"}))
RAYCLUSTER_SPEC = Obj({**dict.fromkeys(["authOptions", "autoscalerOptions", "enableInTreeAutoscaling",
                                        "gcsFaultToleranceOptions", "headServiceAnnotations", "historyServerOptions",
                                        "managedBy", "networkPolicy", "rayVersion", "suspend", "tlsOptions",
                                        "upgradeStrategy"]),
                       "headGroupSpec": HEAD_GROUP, "workerGroupSpecs": [WORKER_GROUP]}, frozenset({"headGroupSpec"}))
DELETION_CONDITION = Obj(dict.fromkeys(["jobStatus", "jobDeploymentStatus", "ttlSeconds"]))
DELETION_RULE = Obj({"policy": None, "condition": DELETION_CONDITION}, frozenset({"policy", "condition"}))
DELETION_STRATEGY = Obj({"onSuccess": Obj({"policy": None}), "onFailure": Obj({"policy": None}),
                         "deletionRules": [DELETION_RULE]})
RAYJOB_SPEC = Obj({**dict.fromkeys(["activeDeadlineSeconds", "backoffLimit", "clusterSelector", "entrypoint",
                                    "entrypointNumCpus", "entrypointNumGpus", "entrypointResources", "jobId",
                                    "managedBy", "metadata", "preRunningDeadlineSeconds", "runtimeEnvYAML",
                                    "shutdownAfterJobFinishes", "submissionMode", "submitterConfig",
                                    "submitterPodTemplate", "suspend", "ttlSecondsAfterFinished"]),
                   "rayClusterSpec": RAYCLUSTER_SPEC, "deletionStrategy": DELETION_STRATEGY})
# no concurrencyPolicy, startingDeadlineSeconds, successfulJobsHistoryLimit or failedJobsHistoryLimit in v1.7
RAYCRONJOB_SPEC = Obj({"jobTemplate": RAYJOB_SPEC, "schedule": None, "timeZone": None, "suspend": None},
                      frozenset({"jobTemplate", "schedule"}))
SPECS = {"RayCluster": RAYCLUSTER_SPEC, "RayJob": RAYJOB_SPEC, "RayCronJob": RAYCRONJOB_SPEC}
API_GROUP = "ray.io/"
MAX_NAME = {"RayCluster": 53, "RayJob": 53 - 6, "RayCronJob": 53 - 6 - 11}  # utils/constant.go
SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}
POLICIES = ["DeleteWorkers", "DeleteCluster", "DeleteSelf", "DeleteNone"]  # TTLs must not decrease along the first 3
JOB_STATUSES = {"SUCCEEDED", "FAILED"}  # the enums of a deletion rule's condition
DEPLOYMENT_STATUSES = {"Failed"}
# the two ways a run ends (a failed Ray job, a run past its deadline and a failed submission all end in
# the deployment status Failed); a Ray job STOPPED by hand matches no v1.7 rule
OUTCOMES = [("jobStatus", "SUCCEEDED"), ("jobDeploymentStatus", "Failed")]


# ---- reading ---------------------------------------------------------------------------------------------------------


def load(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


MANIFESTS = {p.name: load(p) for p in sorted(CLUSTER.glob("*.yaml"))}
DOCS = [(name, d) for name, docs in MANIFESTS.items() for d in docs if isinstance(d, dict) and "kind" in d]
RAY_DOCS = [(name, d) for name, d in DOCS if d["kind"] in SPECS or str(d.get("apiVersion", "")).startswith(API_GROUP)]


def job_specs(doc: dict) -> list[tuple[str, dict]]:
    """The RayJob specs a manifest creates: a RayJob's spec, a RayCronJob's jobTemplate."""
    if doc["kind"] == "RayJob":
        return [(doc["metadata"]["name"], doc["spec"])]
    if doc["kind"] == "RayCronJob":
        return [(doc["metadata"]["name"] + ".jobTemplate", doc["spec"]["jobTemplate"])]
    return []


def walk(value, key: str):
    """Every value of ``key`` anywhere in ``value`` (dicts and lists)."""
    if isinstance(value, dict):
        for k, v in value.items():
            if k == key:
                yield v
            yield from walk(v, key)
    elif isinstance(value, list):
        for v in value:
            yield from walk(v, key)


# ---- checks: each returns the problems it found ----------------------------------------------------------------------


def field_problems(value, schema: Obj | list, path: str) -> list[str]:
    if isinstance(schema, list):
        if not isinstance(value, list):
            return [f"{path}: a list in KubeRay v{KUBERAY}, got {type(value).__name__}"]
        return [p for i, v in enumerate(value) for p in field_problems(v, schema[0], f"{path}[{i}]")]
    if not isinstance(value, dict):
        return [f"{path}: an object in KubeRay v{KUBERAY}, got {type(value).__name__}"]
    problems = [f"{path}.{k}: no such field in KubeRay v{KUBERAY} (has: {', '.join(sorted(schema.fields))})"
                for k in value if k not in schema.fields]
    problems += [f"{path}.{k}: required in KubeRay v{KUBERAY}" for k in sorted(schema.required - set(value))]
    for k, sub in schema.fields.items():
        if sub is not None and k in value:
            problems += field_problems(value[k], sub, f"{path}.{k}")
    return problems


def manifest_problems(doc: dict, api_version: str) -> list[str]:
    kind, name = doc.get("kind"), doc.get("metadata", {}).get("name", "?")
    where = f"{kind} {name}"
    if kind not in SPECS:
        return [f"{where}: not a kind of KubeRay v{KUBERAY} this test knows ({', '.join(SPECS)})"]
    problems = [] if doc.get("apiVersion") == api_version else \
        [f"{where}: apiVersion {doc.get('apiVersion')!r}, the README names {api_version!r}"]
    if len(name) > MAX_NAME[kind]:
        problems.append(f"{where}: name longer than {MAX_NAME[kind]} characters (KubeRay refuses it)")
    return problems + field_problems(doc.get("spec"), SPECS[kind], f"{where}: spec")


def rayjob_problems(where: str, spec: dict) -> list[str]:
    """What KubeRay v1.7's ValidateRayJobSpec/ValidateRayClusterSpec refuse (the run would end ValidationFailed)."""
    problems = []
    shutdown, ttl = spec.get("shutdownAfterJobFinishes", False), spec.get("ttlSecondsAfterFinished", 0)
    rules = (spec.get("deletionStrategy") or {}).get("deletionRules") or []
    if ttl < 0 or (ttl > 0 and not shutdown):
        problems.append(f"{where}: ttlSecondsAfterFinished {ttl} needs shutdownAfterJobFinishes: true and >= 0")
    if rules and shutdown:
        problems.append(f"{where}: shutdownAfterJobFinishes and deletionStrategy.deletionRules are mutually exclusive")
    if spec.get("submissionMode", "K8sJobMode") not in SUBMISSION_MODES:
        problems.append(f"{where}: submissionMode {spec['submissionMode']!r} not one of {sorted(SUBMISSION_MODES)}")
    if spec.get("activeDeadlineSeconds", 1) <= 0 or spec.get("backoffLimit", 0) < 0:
        problems.append(f"{where}: activeDeadlineSeconds must be > 0 and backoffLimit >= 0")
    seen: dict[tuple, dict] = {}
    for i, rule in enumerate(rules):
        cond = rule.get("condition", {})
        keys = [k for k in ("jobStatus", "jobDeploymentStatus") if k in cond]
        if len(keys) != 1:
            problems.append(f"{where}: deletionRules[{i}] needs exactly one of jobStatus, jobDeploymentStatus")
            continue
        allowed = JOB_STATUSES if keys[0] == "jobStatus" else DEPLOYMENT_STATUSES
        if cond[keys[0]] not in allowed or rule.get("policy") not in POLICIES or cond.get("ttlSeconds", 0) < 0:
            problems.append(f"{where}: deletionRules[{i}]: {keys[0]} in {sorted(allowed)}, policy in {POLICIES}, "
                            f"ttlSeconds >= 0; got {rule}")
            continue
        ttls = seen.setdefault((keys[0], cond[keys[0]]), {})
        if rule["policy"] in ttls:
            problems.append(f"{where}: deletionRules[{i}] repeats {rule['policy']} for {keys[0]} {cond[keys[0]]}")
        ttls[rule["policy"]] = cond.get("ttlSeconds", 0)
    for (key, status), ttls in seen.items():
        order = [ttls[p] for p in POLICIES[:3] if p in ttls]
        if order != sorted(order):
            problems.append(f"{where}: for {key} {status} the TTLs must grow DeleteWorkers <= DeleteCluster <= "
                            f"DeleteSelf; got {ttls}")
    cluster = spec.get("rayClusterSpec") or {}
    for g in cluster.get("workerGroupSpecs", []):
        lo, hi = g.get("minReplicas"), g.get("maxReplicas")
        if not cluster.get("enableInTreeAutoscaling") and (lo is None or hi is None):
            problems.append(f"{where}: worker group {g.get('groupName')} needs minReplicas and maxReplicas")
        elif lo is not None and hi is not None and not lo <= g.get("replicas", lo) <= hi:
            problems.append(f"{where}: worker group {g.get('groupName')}: not minReplicas <= replicas <= maxReplicas")
    return problems


def cluster_ttl(spec: dict) -> int | None:
    """Seconds a finished run's cluster is kept, whichever way the run ended; None: until someone deletes it."""
    rules = (spec.get("deletionStrategy") or {}).get("deletionRules")
    if rules:  # per outcome, the first rule that deletes the cluster (DeleteSelf deletes it too)
        ttls = [min((r["condition"].get("ttlSeconds", 0) for r in rules
                     if r["policy"] in ("DeleteCluster", "DeleteSelf") and r["condition"].get(key) == value),
                    default=None) for key, value in OUTCOMES]
        return None if None in ttls else max(ttls)
    if spec.get("shutdownAfterJobFinishes"):
        return spec.get("ttlSecondsAfterFinished", 0)
    return None


def history_bounded(spec: dict) -> bool:
    """Whether every finished RayJob deletes itself (v1.7's RayCronJob keeps no history limit of its own)."""
    rules = (spec.get("deletionStrategy") or {}).get("deletionRules") or []
    return all(any(r["policy"] == "DeleteSelf" and r["condition"].get(key) == value for r in rules)
               for key, value in OUTCOMES)


def cron_period(schedule: str) -> tuple[int, int | None]:
    """(period, seconds after midnight of a daily run) of the cron forms cluster/ uses; others raise."""
    macros = {"@hourly": "0 * * * *", "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@weekly": "0 0 * * 0"}
    f = macros.get(schedule.strip(), schedule).split()
    if len(f) == 5 and f[0].isdigit() and f[2] == f[3] == "*":
        if f[1] == "*" and f[4] == "*":
            return 3600, None
        if f[1].isdigit() and f[4] == "*":
            return 86400, int(f[1]) * 3600 + int(f[0]) * 60
        if f[1].isdigit() and f[4].isdigit():
            return 7 * 86400, None
    raise ValueError(f"schedule {schedule!r}: this test reads only 'M H * * *', 'M * * * *', 'M H * * D', @hourly, "
                     "@daily, @midnight and @weekly; extend cron_period for it")


def lifetime(spec: dict) -> int | None:
    """Worst case seconds from a RayJob's creation to its last cluster's deletion; None: unbounded."""
    deadline, ttl = spec.get("activeDeadlineSeconds"), cluster_ttl(spec)
    if deadline is None or ttl is None:
        return None
    return (spec.get("backoffLimit", 0) + 1) * deadline + ttl


def uses_date(spec: dict) -> bool:
    """Whether the job's pipeline config names ``{date}`` (UTC, activeft/config.py)."""
    args = shlex.split(spec.get("entrypoint", ""))
    config = args[args.index("--config") + 1] if "--config" in args[:-1] else None
    return config is not None and "{date}" in (ROOT / config).read_text()


def schedule_problems(doc: dict) -> list[str]:
    where, spec = f"RayCronJob {doc['metadata']['name']}", doc["spec"]
    job = spec["jobTemplate"]
    if "TZ" in spec["schedule"]:
        return [f"{where}: TZ in the schedule is refused by KubeRay; use timeZone"]
    period, start = cron_period(spec["schedule"])
    worst = lifetime(job)
    if worst is None:
        return [f"{where}: a run's cluster lives unbounded (needs activeDeadlineSeconds and a cluster TTL for "
                f"every outcome), so nights overlap"]
    problems = []
    if worst >= period:
        problems.append(f"{where}: (backoffLimit + 1) x activeDeadlineSeconds + cluster TTL = {worst} s is not "
                        f"shorter than the schedule's period {period} s: runs overlap")
    if uses_date(job):
        if spec.get("timeZone") not in ("Etc/UTC", "UTC"):
            problems.append(f"{where}: its config uses {{date}} (UTC): set timeZone: Etc/UTC")
        elif start is not None and start + worst >= 86400:
            problems.append(f"{where}: a run starting {start} s after midnight may retry after midnight UTC "
                            f"({start} + {worst} s), when {{date}} names another output")
    return problems


def service_account_problems(docs: list[tuple[str, dict]]) -> list[str]:
    accounts = {(d["metadata"]["name"], d["metadata"].get("namespace"))
                for _, d in docs if d["kind"] == "ServiceAccount"}
    return [f"{name}: {d['kind']} {d['metadata']['name']} runs as serviceAccountName {sa!r}, which no manifest in "
            f"cluster/ defines" for name, d in docs for sa in set(walk(d.get("spec"), "serviceAccountName"))
            if (sa, d["metadata"].get("namespace")) not in accounts]


def env_names(doc: dict) -> set[str]:
    """Environment variables a manifest sets: the runtime env's env_vars and containers' env."""
    names = {e["name"] for env in walk(doc.get("spec"), "env") if isinstance(env, list) for e in env
             if isinstance(e, dict) and "name" in e}
    for text in walk(doc.get("spec"), "runtimeEnvYAML"):
        names |= set((yaml.safe_load(text) or {}).get("env_vars") or {})
    return names


@functools.cache
def tokens(package_dir: str, prefix: str) -> frozenset:
    """Every ``PREFIX...`` identifier in the .py files under ``package_dir`` (one read of the tree)."""
    pattern, found = re.compile(rb"\b" + prefix.encode() + rb"[A-Za-z0-9_]+"), set()
    for root, _, files in os.walk(package_dir):
        for f in files:
            if f.endswith(".py"):
                with open(os.path.join(root, f), "rb") as fh:
                    found.update(m.decode() for m in pattern.findall(fh.read()))
    return frozenset(found)


def ray_dir() -> str:
    spec = importlib.util.find_spec("ray")  # (found, not imported)
    assert spec is not None and spec.submodule_search_locations, "ray is not installed"
    return spec.submodule_search_locations[0]


def env_problems(docs: list[tuple[str, dict]]) -> list[str]:
    """``RAY_*`` settings must be read by the installed Ray, ``ACTIVEFT_*`` ones by activeft."""
    problems = []
    for name, d in docs:
        for var in sorted(env_names(d)):
            for prefix, where in (("RAY_", ray_dir()), ("ACTIVEFT_", str(ROOT / "activeft"))):
                if var.startswith(prefix) and var not in tokens(where, prefix):
                    problems.append(f"{name}: {var} is set but appears nowhere in {where} (not a setting; a Ray "
                                    "setting read only by its C++ core would need another check)")
    return problems


def readme_api() -> tuple[set[str], set[str]]:
    """The KubeRay versions and ray.io apiVersions the README names."""
    text = (ROOT / "README.md").read_text()
    return set(re.findall(r"KubeRay\s+v(\d+\.\d+)", text)), set(re.findall(r"apiVersion:\s+(ray\.io/\w+)", text))


# ---- tests -----------------------------------------------------------------------------------------------------------


def no_problems(problems: list[str]) -> None:
    assert not problems, "\n".join(problems)


def test_cluster_holds_the_kuberay_manifests():
    kinds = {d["kind"] for _, d in DOCS}
    assert {"RayJob", "RayCronJob", "RayCluster", "ServiceAccount"} <= kinds, kinds
    assert RAY_DOCS


def test_readme_names_the_kuberay_version_of_the_tables():
    versions, api_versions = readme_api()
    assert versions == {KUBERAY}, f"README names KubeRay {sorted(versions)}; this test's tables are v{KUBERAY}"
    assert api_versions == {"ray.io/v1"}, api_versions
    stale = [(name, v) for name in MANIFESTS for v in
             re.findall(r"KubeRay\s*(?:>=?\s*)?v?(\d+\.\d+)", (CLUSTER / name).read_text()) if v != KUBERAY]
    assert not stale, f"manifests name other KubeRay versions than v{KUBERAY}: {stale}"


@pytest.mark.parametrize("name,doc", RAY_DOCS, ids=[f"{n}:{d['kind']}" for n, d in RAY_DOCS])
def test_fields_exist_in_the_readmes_kuberay(name, doc):
    (api_version,) = readme_api()[1]
    no_problems(manifest_problems(doc, api_version))


@pytest.mark.parametrize("name,doc", RAY_DOCS, ids=[f"{n}:{d['kind']}" for n, d in RAY_DOCS])
def test_kuberay_would_accept_the_jobs(name, doc):
    no_problems([p for where, spec in job_specs(doc) for p in rayjob_problems(where, spec)])


@pytest.mark.parametrize("name,doc", RAY_DOCS, ids=[f"{n}:{d['kind']}" for n, d in RAY_DOCS])
def test_a_finished_jobs_cluster_is_deleted_within_minutes(name, doc):
    for where, spec in job_specs(doc):
        ttl = cluster_ttl(spec)
        assert ttl is not None and ttl <= MAX_CLUSTER_TTL_S, \
            f"{name}: {where} keeps its cluster {'forever' if ttl is None else f'{ttl} s'} after the job ends"


def test_nightly_runs_end_before_the_next_and_delete_themselves():
    crons = [d for _, d in DOCS if d["kind"] == "RayCronJob"]
    assert crons
    for d in crons:
        no_problems(schedule_problems(d))
        assert history_bounded(d["spec"]["jobTemplate"]), \
            f"RayCronJob {d['metadata']['name']}: finished RayJobs pile up (no DeleteSelf rule for every outcome)"
    assert lifetime(crons[0]["spec"]["jobTemplate"]) == 3 * 21600 + 600, "update the README and the manifest's comment"


def test_every_service_account_has_a_manifest():
    no_problems(service_account_problems(DOCS))
    assert any(walk(d.get("spec"), "serviceAccountName") for _, d in DOCS)


def test_environment_variables_are_real_settings():
    no_problems(env_problems(DOCS))
    assert "RAY_DATA_EXECUTION_NO_PROGRESS_TIMEOUT_S" in tokens(ray_dir(), "RAY_")  # the scan finds a real one


def test_the_checks_catch_what_the_issue_reported():
    """The nightly manifest as it was (a day's TTL, no deadline, no history bound) and other breakages."""
    (api_version,) = readme_api()[1]
    (cron,) = [d for _, d in DOCS if d["kind"] == "RayCronJob"]
    old = copy.deepcopy(cron)
    old["spec"].update(schedule="0 2 * * *", timeZone="Etc/UTC")
    job = old["spec"]["jobTemplate"]
    for k in ("deletionStrategy", "activeDeadlineSeconds"):
        job.pop(k, None)
    job.update(shutdownAfterJobFinishes=True, ttlSecondsAfterFinished=86400)
    assert "overlap" in schedule_problems(old)[0] and cluster_ttl(job) == 86400 and not history_bounded(job)
    job["activeDeadlineSeconds"] = 21600
    assert "not shorter than the schedule's period" in schedule_problems(old)[0]
    job.update(ttlSecondsAfterFinished=600, backoffLimit=3)  # 4 x 6 h + 600 s > 1 day
    assert schedule_problems(old)

    policy = copy.deepcopy(cron)
    policy["spec"].update(concurrencyPolicy="Forbid", successfulJobsHistoryLimit=3)
    assert len(manifest_problems(policy, api_version)) == 2
    assert "apiVersion" in manifest_problems({**cron, "apiVersion": "ray.io/v1alpha1"}, api_version)[0]
    both = copy.deepcopy(cron)["spec"]["jobTemplate"]
    both.update(shutdownAfterJobFinishes=True, deletionStrategy={"deletionRules": [
        {"policy": "DeleteCluster", "condition": {"jobStatus": "SUCCEEDED", "ttlSeconds": 600}}]})
    assert "mutually exclusive" in rayjob_problems("x", both)[0]
    with pytest.raises(ValueError, match="extend cron_period"):
        cron_period("*/30 * * * *")

    lone = [(n, d) for n, d in DOCS if d["kind"] != "ServiceAccount"]
    assert service_account_problems(lone)
    bogus = copy.deepcopy(cron)
    bogus["spec"]["jobTemplate"]["runtimeEnvYAML"] = "env_vars: {RAY_DATA_NO_SUCH_SETTING_S: '1800'}\n"
    assert env_problems([("x", bogus)]) and env_names(bogus) == {"RAY_DATA_NO_SUCH_SETTING_S"}
