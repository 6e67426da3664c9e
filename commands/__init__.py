"""The `router` command: the service's commands (router/cli.py, router/access/cli.py, router/traffic_cli.py)
and the training commands (train/cli.py, commands/dataset.py) on one app.

It sits above router/ and train/, which never import each other, so a command that needs both (labelling
with a policy's litellm target) lives here. The `router` console script and `python -m router` run `app`;
no package below imports this one (pyproject.toml's import contracts hold that).
"""

import typer

from commands.dataset import build_dataset
from router import cli as service
from router.access.cli import keys_app
from router.traffic_cli import traffic_app
from train import cli as training
from train import targets_cli

app = typer.Typer(
    help="Confidence-based router and guard for LLM applications.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Click's plain help for this command and every one under it (they take the top app's setting): rich's
    # panels cut option names and wrap descriptions a word per line in an 80-column terminal.
    rich_markup_mode=None,
)
# short_help: the command list shows one line each in 80 columns; each docstring says the rest.
app.command("build-dataset", short_help="Label questions with a model's answers, local or remote.")(
    build_dataset
)
app.command("train-scorer", short_help="Train and calibrate a scorer from labelled rows.")(
    training.train_scorer
)
app.command("train-task-head", short_help="Fit the scorer's kind-of-request head (task families).")(
    training.train_task_head
)
app.command("train-family-heads", short_help="Fit certainty heads of one task family each.")(
    training.train_family_heads
)
app.command("add-target", short_help="Add a head for one more model, no retraining.")(targets_cli.add_target)
app.command("remove-target", short_help="Drop a model the scorer predicts.")(targets_cli.remove_target)
app.command("eval-scorer", short_help="Judge a scorer on rows it never saw (AUROC, ECE, baselines).")(
    training.eval_scorer
)
app.command("eval-routing", short_help="Judge routing on questions every model labelled (APGR).")(
    training.eval_routing
)
app.command("eval-judge", short_help="How far an LLM judge agrees with the gold graders (kappa).")(
    training.eval_judge
)
app.command("train-answerer", short_help="Teach the local model to answer, doubt or refuse in JSON.")(
    training.train_answerer
)
app.command("eval-answerer", short_help="Judge an answerer against the base model and the guard.")(
    training.eval_answerer
)
app.command("serve")(service.serve)
app.command("calibrate", short_help="Fit a calibrator (raw score -> confidence) and write it.")(
    service.calibrate
)
app.command("score", short_help="Score one question with a policy's scorer; print JSON.")(service.score)
app.add_typer(service.models_app, name="models")
app.add_typer(service.policy_app, name="policy")
app.add_typer(keys_app, name="keys")
app.add_typer(traffic_app, name="traffic")

__all__ = ["app"]
