"""MLflow queries of the workflow: finished runs by fingerprint, group (parent) runs, membership tags.

Searches are one paginated query per experiment, matched in Python: MLflow's filter language
has no `IN` for tags, and one query per planned run would cost a round trip each.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sspo_cli.research import ResearchError
from sspo_cli.run.tracking import Tracker, open_client

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

    from sspo_cli.research.execution.timing import PhaseTimer

FINGERPRINT_TAG = "sspo.fingerprint"
KIND_TAG = "sspo.kind"  # on workflow runs only: "comparison", "sweep", "study" or "eval"
GROUP_ID_TAG = "sspo.group"  # on a comparison/sweep parent run: its id
MEMBERSHIP_TAG = "sspo.groups"  # on training runs: space-separated ids of the comparisons/sweeps using them
PAGE = 5000


def search_all(client: MlflowClient, experiment_ids: list[str], filter_string: str) -> list[Run]:
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs(
            experiment_ids, filter_string, max_results=PAGE, order_by=["attributes.start_time DESC"], page_token=token
        )
        runs += list(page)
        token = page.token
        if not token:
            return runs


def experiment_ids(client: MlflowClient, names: Iterable[str]) -> list[str]:
    ids = []
    for name in sorted(set(names)):
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            ids.append(experiment.experiment_id)
    return ids


def finished_runs_by_fingerprint(client: MlflowClient, experiment_names: Iterable[str]) -> dict[str, Run]:
    """The newest FINISHED training run for each recipe fingerprint in these experiments."""
    ids = experiment_ids(client, experiment_names)
    if not ids:
        return {}
    found: dict[str, Run] = {}
    for run in search_all(client, ids, f"tags.`{FINGERPRINT_TAG}` LIKE '%' and attributes.status = 'FINISHED'"):
        found.setdefault(run.data.tags[FINGERPRINT_TAG], run)
    return found


def training_runs_of_experiment(client: MlflowClient, name: str, status: str = "FINISHED") -> list[Run]:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        raise ResearchError("--experiment", f"no MLflow experiment named {name!r}")
    query = f"tags.`{FINGERPRINT_TAG}` LIKE '%' and attributes.status = '{status}'"
    runs = search_all(client, [experiment.experiment_id], query)
    return list(reversed(runs))  # oldest first: the order they were trained in


def failed_runs_of_experiment(client: MlflowClient, name: str) -> list[Run]:
    """FAILED training runs whose recipe never finished in a later try (those count as failures)."""
    finished = {run.data.tags[FINGERPRINT_TAG] for run in training_runs_of_experiment(client, name)}
    failed = [
        run
        for run in training_runs_of_experiment(client, name, "FAILED")
        if run.data.tags[FINGERPRINT_TAG] not in finished
    ]
    return list({run.data.tags[FINGERPRINT_TAG]: run for run in failed}.values())  # one per recipe


def runs_by_id(client: MlflowClient, run_ids: Iterable[str]) -> list[Run]:
    from mlflow.exceptions import MlflowException

    runs = []
    for run_id in run_ids:
        try:
            run = client.get_run(run_id)
        except MlflowException:
            raise ResearchError("--runs", f"no MLflow run with id {run_id!r} in this store") from None
        if FINGERPRINT_TAG not in run.data.tags:
            raise ResearchError("--runs", f"run {run_id} is not an sspo training run (no {FINGERPRINT_TAG} tag)")
        if run.info.status != "FINISHED":
            raise ResearchError("--runs", f"run {run_id} is {run.info.status}, not FINISHED")
        runs.append(run)
    return runs


def open_group_run(
    tracking_uri: str,
    experiment: str,
    kind: str,
    group_id: str,
    run_name: str,
    params: Mapping[str, Any],
    artifact_root: Path,
    parent_run_id: str | None = None,
) -> Tracker:
    """The parent run of a comparison or sweep (nested under `parent_run_id`, a study's, if given): the same
    one again when the same group is re-run."""
    client = open_client(tracking_uri)
    ids = experiment_ids(client, [experiment])
    if ids:
        existing = search_all(client, ids, f"tags.`{GROUP_ID_TAG}` = '{group_id}' and tags.`{KIND_TAG}` = '{kind}'")
        if existing:
            return Tracker.resume(tracking_uri, existing[0].info.run_id)
    return Tracker.start(
        tracking_uri,
        experiment,
        run_name,
        params,
        {KIND_TAG: kind, GROUP_ID_TAG: group_id},
        artifact_root,
        parent_run_id,
    )


def close_group_run(
    tracker: Tracker, files: Mapping[str, Path], timer: PhaseTimer, ok: bool, metrics: Mapping[str, float] | None = None
) -> dict[str, Any]:
    """Log the outputs and the workflow's timing (and `metrics`) on the group run and end it; the timing."""
    with timer.phase("logging artifacts"):
        for path in files.values():
            tracker.log_artifact(path)
    timing = timer.report()
    workflow = {f"workflow/{key}": value for key, value in timing.items() if isinstance(value, float)}
    tracker.log_metrics({**(metrics or {}), **workflow}, step=0)
    tracker.finish("FINISHED" if ok else "FAILED")
    return timing


def add_membership(client: MlflowClient, run_id: str, current: str | None, group_id: str) -> None:
    """Append `group_id` to the run's membership tag (a run may serve several comparisons)."""
    ids = (current or "").split()
    if group_id not in ids:
        client.set_tag(run_id, MEMBERSHIP_TAG, " ".join([*ids, group_id]))


def membership_filter(group_id: str) -> str:
    """What to paste into the MLflow UI's search box to see one comparison's runs side by side."""
    return f"tags.`{MEMBERSHIP_TAG}` LIKE '%{group_id}%'"
