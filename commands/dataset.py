"""`router build-dataset`: label QA files with a local model (train/) or with a policy's litellm target
(commands/remote_label.py, through router/'s target), graded by each row's grader; the `judge` grader's
verdicts come from another policy target (commands/judge.py)."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Annotated

import typer

from train import cli as training


def build_dataset(
    data: Annotated[list[Path], typer.Option("--data", help="QA files (repeat the option).")],
    out: Annotated[Path, typer.Option(help="labels.jsonl; appended to, so a rerun resumes.")],
    model: Annotated[
        str | None,
        typer.Option(
            help="The local model whose answers are labelled (default smollm2-135m-instruct); "
            "not with --policy."
        ),
    ] = None,
    policy: Annotated[
        Path | None,
        typer.Option(help="Label with a litellm target of this policy instead (needs --target)."),
    ] = None,
    target: Annotated[
        str | None,
        typer.Option(help="The policy's litellm target whose answers are labelled (with --policy)."),
    ] = None,
    samples: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Sampled answers per question (self-consistency); default 4. With --policy: greedy "
            "answers only, so 0 (the default there); more is refused.",
        ),
    ] = None,
    temperature: Annotated[float, typer.Option(help="For the samples (local only).")] = 1.0,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="The answer's length cap.")] = 24,
    batch_size: Annotated[
        int, typer.Option(min=1, help="Rows labelled, then appended and synced to disk, at a time.")
    ] = 16,
    concurrency: Annotated[
        int,
        typer.Option(
            min=1, help="With --policy: requests in flight at once (within a batch, so at most --batch-size)."
        ),
    ] = 8,
    limit: Annotated[int | None, typer.Option(help="At most this many rows per file.")] = None,
    seed: int = 0,
    context_variants: Annotated[
        bool,
        typer.Option(
            help="Ask each question that has a passage three ways: with its own passage, with another "
            "row's (then only abstaining is correct) and with none; each row records which."
        ),
    ] = False,
    grader: Annotated[
        str | None,
        typer.Option(
            help="The grader of rows that neither name one (`grader`) nor call for one by their fields "
            "(`task: math`, `choices`, another question's passage); default alias. Each row records the "
            "rule that graded it. `judge` (needs --judge-policy) judges every row, gold-graded ones too, "
            "and records their gold grade beside the verdict."
        ),
    ] = None,
    judge_policy: Annotated[
        Path | None,
        typer.Option(
            help="Judge the rows whose grader is `judge` (chat rows, rows naming it, every row with --grader "
            "judge) with a litellm target of this policy (needs --judge-target)."
        ),
    ] = None,
    judge_target: Annotated[
        str | None,
        typer.Option(help="The policy's litellm target that judges (with --judge-policy)."),
    ] = None,
    answered: Annotated[
        bool,
        typer.Option(
            "--answered",
            help="The --data files are labels files: grade the answers in them again, asking no model "
            "(with --grader judge, the judge's verdict beside each row's gold grade).",
        ),
    ] = False,
    from_traffic: Annotated[
        bool,
        typer.Option(
            "--from-traffic",
            help="The --data files are `router traffic export` files: grade the answers of --answer-of in "
            "them, asking no model.",
        ),
    ] = False,
    answer_of: Annotated[
        str | None,
        typer.Option(help="With --from-traffic: the target whose answers are labelled (one file each)."),
    ] = None,
    gold: Annotated[
        list[Path] | None,
        typer.Option(
            help="With --from-traffic: QA files whose gold answers grade the captured requests that ask "
            "their questions (repeat the option); the other requests are graded as chat."
        ),
    ] = None,
    source: Annotated[
        list[str] | None, typer.Option("--source", help="Only the rows of this source (repeat the option).")
    ] = None,
    judge_self: Annotated[
        bool,
        typer.Option(
            "--judge-self",
            help="Let the judge be the model being labelled (refused otherwise: a model may not judge its "
            "own answers).",
        ),
    ] = False,
) -> None:
    """Answer each question with the model (local, or a policy's litellm target), grade it, and measure
    self-consistency (local only)."""
    from train.label import done_ids

    def usage(message: str) -> typer.Exit:
        typer.echo(f"error: {message}", err=True)
        return typer.Exit(2)

    remote = None
    given = "--answered" if answered else "--from-traffic" if from_traffic else None
    if answered and from_traffic:
        raise usage("--answered and --from-traffic are exclusive: labels files or traffic exports")
    if given and (policy is not None or model is not None or context_variants):
        raise usage(
            f"{given} grades the answers already in the --data files: no --model, --policy or "
            "--context-variants"
        )
    if from_traffic and answer_of is None:
        raise usage("--from-traffic needs --answer-of TARGET: the target whose answers are labelled")
    if (answer_of is not None or gold) and not from_traffic:
        raise usage("--answer-of and --gold go with --from-traffic")
    if policy is None and target is not None:
        raise usage("--target needs --policy (the policy file that defines the target)")
    if judge_policy is None and judge_target is not None:
        raise usage("--judge-target needs --judge-policy (the policy file that defines the judge)")
    if judge_policy is None and grader == "judge":
        raise usage("--grader judge needs a judge: --judge-policy FILE --judge-target NAME")
    if policy is not None:
        if model is not None:
            raise usage("--model and --policy are exclusive: --model is a local model, --policy a remote one")
        if samples:
            raise usage(
                f"--samples {samples}: a policy target answers greedily only; drop --samples or pass 0"
            )
        from commands.remote_label import PolicyTargetError, labeller_for

        try:
            remote = labeller_for(policy, target, max_new_tokens, concurrency)
        except PolicyTargetError as exc:
            for line in exc.lines:
                typer.echo(line, err=True)
            raise typer.Exit(2) from None
    records = training.records_to_label(data, limit, seed, context_variants, frozenset(source or []))
    answers = None
    if given:
        from train.label import answered_rows, traffic_answers, with_gold

        try:
            answers = traffic_answers(data, answer_of or "") if from_traffic else answered_rows(data)
        except ValueError as exc:
            raise usage(str(exc)) from None
        records = [r for r in records if r.id in answers]
        if gold:
            records = with_gold(records, training.records_to_label(gold, None, seed, False))
    judge = None
    if judge_policy is not None:
        from commands.judge import judge_for
        from commands.remote_label import PolicyTargetError

        if answers is not None:
            labelled = {answers[r.id].get("model", "") for r in records}
        else:
            labelled = {remote.target.model if remote is not None else model or training.DEFAULT_LABELLER}
        try:
            judge = judge_for(judge_policy, judge_target, concurrency, labelled, judge_self)
        except PolicyTargetError as exc:
            for line in exc.lines:
                typer.echo(line, err=True)
            raise typer.Exit(2) from None
    grading = training.grading_for(records, grader)
    if judge is not None and grader == "judge":
        from commands.judge import JudgingEveryRow

        grading = JudgingEveryRow()
    from train.label import LabelSettings

    settings = LabelSettings(4 if samples is None else samples, temperature, max_new_tokens, batch_size)
    if remote is None and judge is None and answers is None:
        written = training.label_locally(records, out, model, settings, grading)
    else:
        from commands.judge import answered_labeller, local_labeller
        from commands.remote_label import (
            AsyncLabeller,
            RemoteLabelError,
            label_on_one_loop,
            quiet_upstream_log,
        )

        label: AsyncLabeller
        if answers is not None:
            label = answered_labeller(answers, grading)
        elif remote is not None:
            label = partial(remote.label_batch, grading=grading)
        else:
            label = local_labeller(model or training.DEFAULT_LABELLER, settings, grading)
        if judge is not None:
            label = judge.after(label)
        try:
            with quiet_upstream_log(), typer.progressbar(length=len(records), label="labelling") as bar:
                bar.update(len(done_ids(out) & {r.id for r in records}))
                written = label_on_one_loop(label, records, out, batch_size, bar.update)
        except RemoteLabelError as exc:  # rows labelled before it are written; a rerun resumes after them
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
    training.say_labelled(out, written, records)
