"""The training commands; commands/ mounts them on the `router` command (build-dataset, which may label
with a router target, is assembled there from the labelling steps below)."""

from __future__ import annotations

import random
from itertools import chain, zip_longest
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast, get_args

import typer

from train.data import DataError, QARecord, load_records
from train.data import context_variants as with_context_variants

if TYPE_CHECKING:
    from train.label import Grading, LabelSettings

DEFAULT_LABELLER = "smollm2-135m-instruct"


def records_to_label(
    data: list[Path],
    limit: int | None,
    seed: int,
    context_variants: bool,
    sources: frozenset[str] = frozenset(),
) -> list[QARecord]:
    """Up to `limit` shuffled rows per file (of `sources` only, when given), interleaved, so a partial run
    covers every source; with `context_variants`, each question that has a passage asked three ways. A bad
    file, or a source in none of them, exits with 2."""
    per_file = []
    seen: set[str] = set()
    for path in data:
        loaded = _loaded(path)
        seen.update(r.source for r in loaded)
        records = [r for r in loaded if not sources or r.source in sources]
        random.Random(f"{seed}:{path.name}").shuffle(records)
        per_file.append(records[:limit])
    if missing := sorted(sources - seen):
        known = ", ".join(sorted(seen))
        typer.echo(
            f"error: --source {missing[0]}: no row of it in the --data files (their sources: {known})",
            err=True,
        )
        raise typer.Exit(2)
    interleaved = [r for r in chain.from_iterable(zip_longest(*per_file)) if r is not None]
    if not context_variants:
        return interleaved
    try:
        return with_context_variants(interleaved, seed)
    except DataError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def grading_for(records: list[QARecord], default: str | None) -> Grading:
    """Every record's grader (its own, the one its fields call for, else `default`), checked before any
    answer is asked for: an unknown name exits with 2 and one line naming the known ones."""
    from train.graders import GRADERS, grader_for
    from train.label import Grading

    if default is not None and default not in GRADERS:
        known = ", ".join(sorted(GRADERS))
        typer.echo(f"error: --grader: unknown grader '{default}' (known: {known})", err=True)
        raise typer.Exit(2)
    for record in records:
        try:
            grader_for(record, default)
        except ValueError as exc:  # a record naming a grader nobody registered
            typer.echo(f"error: row {record.id}: {exc}", err=True)
            raise typer.Exit(2) from None
    return Grading(default)


def label_locally(
    records: list[QARecord],
    out: Path,
    model: str | None,
    settings: LabelSettings,
    grading: Grading | None = None,
) -> int:
    """Label the records `out` does not hold yet with a local model's answers; returns how many."""
    from localmodel import LocalModel
    from train.label import build_dataset, done_ids

    with typer.progressbar(length=len(records), label="labelling") as bar:
        bar.update(len(done_ids(out) & {r.id for r in records}))
        return build_dataset(
            LocalModel(model or DEFAULT_LABELLER), records, out, settings, bar.update, grading
        )


def say_labelled(out: Path, written: int, records: list[QARecord]) -> None:
    typer.echo(f"{out}: {written} rows labelled now, {len(records) - written} were already there")


def train_scorer(
    data: Annotated[
        list[Path],
        typer.Option(
            "--data",
            help="labels.jsonl from build-dataset (repeatable). Labels from several models train one head "
            "per model, the first file's model first.",
        ),
    ],
    out: Annotated[Path, typer.Option(help="The scorer folder to write.")],
    method: Annotated[
        str, typer.Option(help="head (EliCal, pre-generation) or intrinsic (Granite-style).")
    ] = "head",
    activated: Annotated[
        bool, typer.Option(help="intrinsic: an aLoRA that switches on at the invocation.")
    ] = True,
    base: Annotated[
        str, typer.Option(help="The base model the labels were made with.")
    ] = "smollm2-135m-instruct",
    layer: Annotated[
        int | None,
        typer.Option(help="Decoder layer the head reads; default: the one whose probe transfers best."),
    ] = None,
    pooling: Annotated[
        str, typer.Option(help="head: last (the last token's state) or last+mean (and the prompt's mean).")
    ] = "last+mean",
    hold_out: Annotated[
        list[str] | None, typer.Option(help="Sources kept out of training (repeatable).")
    ] = None,
    stage2_size: Annotated[int, typer.Option(help="Rows with correctness labels for stage 2.")] = 1000,
    lora_r: int = 8,
    lora_alpha: int = 16,
    lora_dropout: float = 0.05,
    lora_layers: Annotated[
        int | None, typer.Option(help="head: LoRA on this many layers below the head; default 4, 0 = all.")
    ] = 4,
    batch_size: int = 16,
    gradient_accumulation: int = 1,
    gradient_checkpointing: bool = False,
    stage1_epochs: float = 1.0,
    stage2_epochs: float = 2.0,
    learning_rate: float = 2e-4,
    eval_every: int = 50,
    checkpoint_every: int = 100,
    seed: int = 0,
    resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint in --out.")] = False,
) -> None:
    """Train a scorer adapter from labelled data, calibrate it on held-out rows, and write its folder."""
    from localmodel import Pooling
    from train.head import HeadSettings
    from train.intrinsic import IntrinsicSettings
    from train.jobs import train_head_scorer, train_intrinsic_scorer

    if method == "intrinsic":
        intrinsic = IntrinsicSettings(
            activated=activated,
            lora_r=lora_r,
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
            learning_rate=learning_rate,
            batch_size=batch_size,
            gradient_accumulation=gradient_accumulation,
            gradient_checkpointing=gradient_checkpointing,
            epochs=stage2_epochs,
            eval_every=eval_every,
            checkpoint_every=checkpoint_every,
            seed=seed,
        )
        train_intrinsic_scorer(base, data, out, intrinsic, frozenset(hold_out or []), resume, typer.echo)
        typer.echo(f"{out}: intrinsic scorer written")
        return
    if method != "head":
        typer.echo(f"error: --method must be head or intrinsic, not '{method}'", err=True)
        raise typer.Exit(2)
    if pooling not in get_args(Pooling):
        typer.echo(f"error: --pooling must be last or last+mean, not '{pooling}'", err=True)
        raise typer.Exit(2)
    settings = HeadSettings(
        layer=layer,
        pooling=cast(Pooling, pooling),
        lora_layers=lora_layers or None,
        lora_r=lora_r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        learning_rate=learning_rate,
        batch_size=batch_size,
        gradient_accumulation=gradient_accumulation,
        gradient_checkpointing=gradient_checkpointing,
        stage1_epochs=stage1_epochs,
        stage2_epochs=stage2_epochs,
        stage2_size=stage2_size,
        eval_every=eval_every,
        checkpoint_every=checkpoint_every,
        seed=seed,
    )
    card = train_head_scorer(base, data, out, settings, frozenset(hold_out or []), resume, typer.echo)
    typer.echo(f"{out}: head scorer at layer {card.layer} written")


def train_task_head(
    scorer: Annotated[Path, typer.Option(help="A head scorer folder; the task head is written into it.")],
    data: Annotated[
        list[Path],
        typer.Option("--data", help="QA files or shipped sets (humaneval, ifeval, ...) of the families."),
    ],
    hold_out: Annotated[
        list[str] | None, typer.Option(help="A source whose rows only judge (repeatable).")
    ] = None,
    per_source: Annotated[int, typer.Option(min=10, help="At most this many rows of each source.")] = 400,
    seed: Annotated[int, typer.Option(help="The split's and the sampling's seed.")] = 0,
    states_cache: Annotated[
        Path | None, typer.Option(help="An .npz of prompt states kept between runs (computed once).")
    ] = None,
) -> None:
    """Fit the kind-of-request head: which task family a request is, on the scorer's own states.

    Every record's family is its `task`, else read from its fields (a passage, options, or a bare
    question). The certainty heads are left as they are; the card records the head's accuracy per family
    on test rows (the held-out sources' and the others' test split).
    """
    from train.task_head import train_task_head as fit

    records = list(chain.from_iterable(_loaded(path) for path in data))
    report = fit(scorer, records, frozenset(hold_out or []), per_source, seed, states_cache)
    for family, measured in report["test_accuracy"].items():
        typer.echo(f"{family}: {measured['correct']}/{measured['n']} = {measured['accuracy']:.3f}")
    typer.echo(f"{scorer / 'scorer.json'}: task head over {len(report['test_accuracy'])} families")


def train_family_heads(
    scorer: Annotated[
        Path, typer.Option(help="A head scorer folder with a task head; the heads go into it.")
    ],
    data: Annotated[list[Path], typer.Option("--data", help="Label files (build-dataset's output).")],
    min_positives: Annotated[
        int, typer.Option(min=2, help="A family needs this many right answers among its readable rows.")
    ] = 30,
    family: Annotated[
        list[str] | None, typer.Option(help="Fit heads for this task family only (repeatable; default: all).")
    ] = None,
    states_cache: Annotated[
        Path | None, typer.Option(help="An .npz of prompt states kept between runs (computed once).")
    ] = None,
) -> None:
    """Fit a certainty head of its own for each model and task family with enough right answers, read where
    the task head takes a request for that family (docs/training.md, "Family heads").

    Layer and strength are chosen by cross-validation on the family's train, dev and calibration rows; the
    test rows are never read. Each head is judged nested (every row scored by a head fitted without it),
    and replaces the folder's earlier family heads; the other heads are left as they are.
    """
    from train.family_heads import train_family_heads as fit

    try:
        reports = fit(scorer, data, min_positives, states_cache, typer.echo, frozenset(family or []))
    except (ValueError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"{scorer / 'scorer.json'}: {len(reports)} family heads")


def _loaded(path: Path) -> list[QARecord]:
    """A file's records; a bad one exits with 2 and one line naming it."""
    try:
        return load_records(path)
    except DataError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


def eval_scorer(
    adapter: Annotated[Path, typer.Option(help="A scorer folder.")],
    data: Annotated[list[Path], typer.Option("--data", help="labels.jsonl, or QA files with --label-with.")],
    out: Annotated[Path, typer.Option(help="Folder for metrics.json and report.md.")],
    split: Annotated[str, typer.Option(help="test, dev, calibration, train or all.")] = "test",
    label_with: Annotated[
        str | None, typer.Option(help="Label unlabelled QA files with this model first.")
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Split seed; default: the one the scorer was trained with.")
    ] = None,
    source: Annotated[
        list[str] | None, typer.Option(help="Only rows from these sources (repeatable).")
    ] = None,
    cross_fit: Annotated[
        int,
        typer.Option(
            min=0,
            help="Also judge the head's recipe on every trained row, cross-fitted over this many folds.",
        ),
    ] = 0,
    target: Annotated[
        str | None, typer.Option(help="The model whose answers are judged; default: the scorer's first.")
    ] = None,
) -> None:
    """Judge a scorer on labelled rows it never saw: AUROC, ECE, Brier, PRR with bootstrap intervals."""
    from train.jobs import evaluate_scorer

    if label_with is not None:
        from train.label import LabelSettings

        labels = out / "labels.jsonl"
        records = records_to_label(data, None, 0, False)
        say_labelled(labels, label_locally(records, labels, label_with, LabelSettings()), records)
        data, split = [labels], "all"
    if cross_fit == 1:  # one fold would fit on nothing and judge everything
        raise typer.BadParameter("needs at least 2 folds (0 turns it off)", param_hint="--cross-fit")
    try:
        metrics = evaluate_scorer(adapter, data, out, split, seed, frozenset(source or []), cross_fit, target)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    scorer = metrics["scorer"]
    typer.echo(
        f"{out / 'metrics.json'}: n={scorer['n']} positives={scorer['positives']} "
        f"AUROC={scorer['auroc']['value'] if scorer['auroc'] else 'undefined'}"
    )


def eval_judge(
    labels: Annotated[
        list[Path], typer.Option("--labels", help="labels.jsonl written with --grader judge (repeat).")
    ],
    out: Annotated[Path, typer.Option(help="Folder for metrics.json and report.md.")],
) -> None:
    """How far a judge agrees with the gold graders on rows both graded: verdicts given, agreement and
    Cohen's kappa per gold grader, and whether the judge is trusted."""
    from train import judge_agreement

    try:
        rows = judge_agreement.judged_rows(labels)
    except (OSError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    if not rows:
        said = "no row was judged beside a gold grade (label with --grader judge)"
        typer.echo(f"error: {', '.join(map(str, labels))}: {said}", err=True)
        raise typer.Exit(2)
    agreements = judge_agreement.agreement(rows)
    judge_agreement.write(agreements, out)
    typer.echo(judge_agreement.report(agreements), nl=False)


def eval_routing(
    scorer: Annotated[Path, typer.Option(help="A scorer folder that predicts every labelled model.")],
    labels: Annotated[
        list[Path],
        typer.Option(
            "--labels", help="One labels.jsonl per model (repeatable); without --cost, cheapest first."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Folder for metrics.json, report.md and the plots.")],
    cost: Annotated[
        list[str] | None, typer.Option(help="MODEL=DOLLARS per 1,000 requests (repeatable).")
    ] = None,
    split: Annotated[
        str, typer.Option(help="test (held-out sources and the test split), dev, calibration, train or all.")
    ] = "test",
    candidate: Annotated[
        Path | None,
        typer.Option(
            help="A scorer folder to compare with --scorer on the rows held out for both (paired bootstrap); "
            "exit 1 when it routes worse beyond noise."
        ),
    ] = None,
    resamples: Annotated[
        int | None,
        typer.Option(min=10, help="Bootstrap resamples (default 500; the paired comparison's 1000)."),
    ] = None,
) -> None:
    """Routing on questions every model labelled: APGR and CPT, cost-quality curves, per source. With
    --candidate, whether that scorer routes worse than --scorer: exit 1 if so, beyond noise."""
    from train.routing_job import compare_routing_job, evaluate_routing_job

    prices = {}
    for given in cost or []:
        model, _, value = given.rpartition("=")
        try:
            prices[model] = float(value)
        except ValueError as exc:
            raise typer.BadParameter(f"'{given}' is not MODEL=DOLLARS", param_hint="--cost") from exc
    try:
        if candidate is not None:
            metrics = compare_routing_job(
                scorer, candidate, labels, out, split, prices, typer.echo, resamples
            )
        else:
            metrics = evaluate_routing_job(scorer, labels, out, split, prices, typer.echo, resamples)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    if candidate is not None:
        _promotion_verdict(out, metrics)
        return
    headline = metrics["strategies"]["scorer"].get("apgr")
    apgr = f"APGR {headline['value']:.3f} [{headline['low']:.3f}, {headline['high']:.3f}]" if headline else ""
    typer.echo(f"{out / 'metrics.json'}: n={metrics['n']} {apgr}".rstrip())


def _promotion_verdict(out: Path, metrics: dict[str, Any]) -> None:
    """One line on the verdict; exit 1 when the candidate is worse beyond noise, so a job can gate on it."""
    from train.routing_compare import WORSE

    reasons = "; ".join(metrics["reasons"])
    line = f"candidate {metrics['verdict']}" + (f": {reasons}" if reasons else "")
    typer.echo(f"{out / 'metrics.json'}: n={metrics['n']}")
    if metrics["verdict"] == WORSE:
        typer.echo(line, err=True)
        raise typer.Exit(1)
    typer.echo(line)


def train_answerer(
    data: Annotated[list[Path], typer.Option("--data", help="labels.jsonl from build-dataset (repeatable).")],
    out: Annotated[
        Path, typer.Option(help="The answerer folder to write (a PEFT adapter and answerer.json).")
    ],
    scorer: Annotated[
        Path | None,
        typer.Option(
            help="The head scorer whose confidence splits wrong answers into refuse and uncertain; "
            "default: the shipped one (policies/scorers/smollm2-head)."
        ),
    ] = None,
    base: Annotated[str, typer.Option(help="The model the labels were made with.")] = "smollm2-135m-instruct",
    hold_out: Annotated[
        list[str] | None,
        typer.Option(
            help="Sources kept out of training (repeatable); default: the scorer's held-out sources."
        ),
    ] = None,
    train_rows: Annotated[
        int | None, typer.Option(min=1, help="Train on a seeded sample of this many training rows.")
    ] = None,
    answer_share: Annotated[
        float | None,
        typer.Option(
            min=0.0, max=1.0, help="With --train-rows: the share of that sample the base model answers right."
        ),
    ] = None,
    dev_rows: Annotated[int, typer.Option(min=1, help="Dev rows judged at each evaluation.")] = 200,
    epochs: float = 1.0,
    lora_r: int = 16,
    lora_alpha: int = 64,
    lora_dropout: float = 0.05,
    learning_rate: float = 2e-4,
    weight_decay: float = 0.01,
    batch_size: int = 16,
    gradient_accumulation: int = 1,
    gradient_checkpointing: Annotated[
        bool | None, typer.Option(help="Default: on a GPU only.", show_default=False)
    ] = None,
    bf16: Annotated[bool | None, typer.Option(help="Default: on a GPU only.", show_default=False)] = None,
    pack_tokens: Annotated[int, typer.Option(min=16, help="Tokens per packed row of a batch.")] = 512,
    eval_every: int = 25,
    checkpoint_every: int = 25,
    patience: int = 4,
    seed: int = 0,
    resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint in --out.")] = False,
) -> None:
    """Fine-tune the local model (LoRA SFT) to reply in the failure-aware JSON: answer what it gets right,
    refuse or hedge what it gets wrong (docs/training.md, "Training an answerer")."""
    from train.answerer import AnswererSettings
    from train.answerer import train_answerer as run

    settings = AnswererSettings(
        lora_r=lora_r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        batch_size=batch_size,
        gradient_accumulation=gradient_accumulation,
        gradient_checkpointing=gradient_checkpointing,
        pack_tokens=pack_tokens,
        epochs=epochs,
        train_rows=train_rows,
        answer_share=answer_share,
        dev_rows=dev_rows,
        bf16=bf16,
        eval_every=eval_every,
        patience=patience,
        checkpoint_every=checkpoint_every,
        seed=seed,
    )
    held_out = frozenset(hold_out) if hold_out else None
    shipped = Path(__file__).resolve().parents[1] / "policies" / "scorers" / "smollm2-head"
    try:
        card = run(base, data, out, scorer or shipped, settings, held_out, resume, typer.echo)
    except (OSError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"{out}: answerer written in {card['training']['seconds']:.0f} s")


def eval_answerer(
    answerer: Annotated[Path, typer.Option(help="An answerer folder from train-answerer.")],
    data: Annotated[list[Path], typer.Option("--data", help="labels.jsonl from build-dataset (repeatable).")],
    out: Annotated[Path, typer.Option(help="Folder for metrics.json and report.md.")],
    policy: Annotated[
        Path | None,
        typer.Option(
            help="The policy whose rules the base model answers behind; default: the shipped guard "
            "(policies/examples/guard.yaml)."
        ),
    ] = None,
    scorer: Annotated[
        Path | None, typer.Option(help="The head scorer the guard's rules read; default: the answerer's.")
    ] = None,
    split: Annotated[
        str, typer.Option(help="test (held-out sources and the test split), dev or all.")
    ] = "test",
    limit: Annotated[int | None, typer.Option(min=1, help="A seeded sample of this many rows.")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=8, help="The answerer's reply length cap.")] = 96,
    batch_size: int = 16,
) -> None:
    """Base model, base model behind the guard policy, the answerer, and the answerer behind the guard, on
    held-out rows: false confidence, refusals of what the model cannot answer, accuracy and share answered,
    ECE of the stated decision, with bootstrap intervals."""
    from train.answerer_eval import evaluate_answerer

    guard = Path(__file__).resolve().parents[1] / "policies" / "examples" / "guard.yaml"
    try:
        metrics = evaluate_answerer(
            answerer, data, out, policy or guard, scorer, split, limit, max_new_tokens, batch_size, typer.echo
        )
    except (OSError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"{out / 'metrics.json'}: n={metrics['n']}")
