"""Our experiments carry MLflow's experiment-kind tag for model training, on a real sqlite store (no mocks)."""

from sspo_cli.run.tracking import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    check_store_writable,
    default_tracking_uri,
    get_or_create_experiment,
    open_client,
)


def test_created_experiment_is_tagged_model_training(tmp_path):
    uri = default_tracking_uri(tmp_path)
    client = open_client(uri)
    experiment_id = get_or_create_experiment(client, "quickstart", tmp_path / "artifacts")
    experiment = client.get_experiment(experiment_id)
    assert experiment.name == "quickstart"
    assert EXPERIMENT_KIND_TAG == "mlflow.experimentKind"
    assert EXPERIMENT_KIND == "custom_model_development"
    assert experiment.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    # A second call finds the same experiment.
    assert get_or_create_experiment(client, "quickstart", tmp_path / "artifacts") == experiment_id


def test_write_check_creates_a_tagged_experiment(tmp_path):
    uri = default_tracking_uri(tmp_path)
    client = open_client(uri)
    experiment_id = check_store_writable(client, uri, "study", tmp_path / "artifacts")
    assert client.get_experiment(experiment_id).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND


def test_existing_experiment_without_a_kind_gets_it_and_a_chosen_kind_is_kept(tmp_path):
    client = open_client(default_tracking_uri(tmp_path))
    ours = client.create_experiment("made-before-the-tag")
    assert EXPERIMENT_KIND_TAG not in client.get_experiment(ours).tags
    assert get_or_create_experiment(client, "made-before-the-tag", None) == ours
    assert client.get_experiment(ours).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND

    chosen = client.create_experiment("user-chosen", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    assert get_or_create_experiment(client, "user-chosen", None) == chosen
    assert client.get_experiment(chosen).tags[EXPERIMENT_KIND_TAG] == "genai_development"
