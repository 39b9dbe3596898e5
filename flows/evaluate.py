"""The `eval-stage` flow: validate, train (or reuse) the featnet, evaluate the model and the champion, promote."""

from __future__ import annotations

import os
from typing import Any

from prefect import flow

from registry import versions
from registry.evaluation import EvalRequest, check_eval_request
from t2v import dataset
from t2v.evaluate import EvalConfig
from tasks.console import say
from tasks.evaluate import cached_result_usable, ensure_featnet, evaluate_inputs, evaluate_task, promote

_E = EvalConfig()


@flow(name="eval-stage", log_prints=True)
def eval_stage(
    model: str | None = None,
    data: str = "data",
    samples: int = _E.samples,
    seen_prompts: int = _E.seen_prompts,
    seed: int = _E.seed,
    force: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate `model` (a registry URI; default the latest version of t2v-generator) on the dataset at
    `data`: every held-out prompt and `seen_prompts` seen ones, `samples` clips each with `seed`.

    The champion (alias `champion`) is evaluated on the same prompts and seeds (a cache hit when it
    was before) and the alias moves to the model only if it wins; the first model evaluated becomes
    champion. `force` evaluates again even on a cache hit. Returns the model's metrics, media paths,
    MLflow run link, the decision and `champion_version`.
    """
    dataset.confine(os.environ.get(dataset.ROOT_ENV), data=data)
    req = check_eval_request(model, data, samples, seen_prompts, seed)
    net = ensure_featnet(str(req.data_dir), [list(v) for v in req.vocabulary], req.prompts.frames, req.prompts.size)
    result = _evaluate(req, req.model, net, force, progress)
    champ_ref = versions.current_champion(versions.client_for(req.tracking_uri), req.model.name)
    champion, champion_error = None, None
    if champ_ref is not None and champ_ref.version != req.model.version:
        champ_inputs = evaluate_inputs(req, champ_ref, net, progress)
        state = evaluate_task(req.data_dir, champ_inputs)(**champ_inputs, return_state=True)
        if state.is_completed():
            champion = state.result()
        else:
            champion_error = str(state.message or state.name)
            say(f"champion version {champ_ref.version} could not be evaluated here: {champion_error}")
    elif champ_ref is not None:
        champion = result
    decision = promote(result, champion, req.tracking_uri, champion_error)
    m = result["metrics"]
    say(f"eval-stage: {req.model.uri}: held-out all-three {m['judge_heldout_all3']:.3f} (pixel judge), "
        f"{m['featnet_heldout_all3']:.3f} (featnet), FD {m['fd_heldout']:.4g} (real floor {m['fd_floor_heldout']:.4g}); "
        f"{'promoted' if decision['promoted'] else 'not promoted'}: {decision['reason']}; "
        f"champion is version {decision['champion_version']}")
    say(f"MLflow run: {result['run_link']}; media: {result['out_dir']}")
    return {**result, **decision, "featnet": net}


def _evaluate(req: EvalRequest, ref: versions.ModelRef, net: dict[str, Any], force: bool,
              progress: bool = False) -> dict[str, Any]:
    """One cached evaluation; a cache hit whose media or model version is gone is evaluated again."""
    inputs = evaluate_inputs(req, ref, net, progress)
    state = evaluate_task(req.data_dir, inputs, refresh=force)(**inputs, return_state=True)
    result = state.result()
    if state.name == "Cached" and not cached_result_usable(result):
        say(f"cached evaluation of {ref.uri} is stale (media or model version gone): evaluating again")
        result = evaluate_task(req.data_dir, inputs, refresh=True)(**inputs)
    return {**result, "cached": state.name == "Cached"}


if __name__ == "__main__":
    eval_stage()
