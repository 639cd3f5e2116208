"""Wanda (Sun, Liu, Bair, Kolter, "A Simple and Effective Pruning Approach for Large Language Models", ICLR 2024):
score every weight by |W_ij| * ||X_j||_2 (Eq. 1; `dimap.pruning.scores.wanda_scores`) from the layer's inputs on
a few calibration images, then remove the lowest scores, with no weight update. Two comparison groups:

- `wanda`: within each output row of each layer, the group the authors use for vision models
  (locuslab/wanda, image_classifiers/prune_utils.py: `compute_mask(..., prune_granularity="row")`, the README's
  command for DeiT/ConvNeXt), so every row of every prunable layer loses exactly the same share;
- `wanda_module`: Wanda's score ranked within each DIMAP module (QKV-M, PRJ-M, MLP-M: one threshold per module,
  as DIMAP ranks Eq. 10), which separates DIMAP's two ideas: the grouping (module) from the score.

Decisions (docs/baselines.md): the input norms come from ONE forward pass of the unpruned model, for both groupings,
so the two differ in the grouping only (the image-classifier code prunes block by block while it collects them);
||X_j||_2 is the plain norm over every token of every calibration image, as Eq. 1 writes it (the image-classifier
code divides the squares by the tokens of each chunk, which changes nothing within a row and, for the
module-aware ranking, would weigh a token of a late, small stage as much as one of an early stage).
Only the prunable layers are pruned (the classifier head and everything AUX-M stay dense), unlike the reference
code, which prunes every linear layer of every block.
"""
import torch

from dimap.pruning.activations import input_sources, observe, run_calibration, sample_of
from dimap.pruning.criteria import _share, masks_for_ratio, per_row_masks
from dimap.pruning.modules import modules_of
from dimap.pruning.scores import wanda_scores


@torch.no_grad()
def input_norms(model, names: list[str], batches) -> dict[str, torch.Tensor]:
    """{weight name: ||X_j||_2 for every input feature j} of the layers `names` over the calibration batches
    (`batches()` gives a fresh iterator), in float64; X holds every token the layer sees, leading dims flattened."""
    sources, _ = input_sources(model, names, sample_of(batches()))
    sums = {n: torch.zeros(model.get_parameter(n).shape[1], dtype=torch.float64,
                           device=model.get_parameter(n).device) for n in names}

    def consume(name, x):
        sums[name] += x.float().square().sum(0, dtype=torch.float64)

    run_calibration(model, batches(), observe(sources, names, consume))
    return {n: s.sqrt() for n, s in sums.items()}


def wanda_score_tensors(weights, model, batches) -> dict[str, torch.Tensor]:
    """{weight name: Wanda score tensor of the weight's shape}: plain scores, for any grouping or N:M pattern."""
    norms = input_norms(model, list(weights), batches)
    return {n: wanda_scores(w, norms[n]) for n, w in weights.items()}


def wanda(weights, ratio, *, model, batches, scores=None):
    """Wanda: |W| * ||X||_2, every output row of every layer loses the same share (its module's share with
    prune.module_ratios). `scores`: `wanda_score_tensors` computed before (they do not depend on the ratio)."""
    scores = scores if scores is not None else wanda_score_tensors(weights, model, batches)
    return {n: per_row_masks(s, _share(ratio, weights.module[n])).cpu() for n, s in scores.items()}


def wanda_module(weights, ratio, *, model, batches, scores=None):
    """Module-aware Wanda: |W| * ||X||_2 ranked within each module (QKV-M, PRJ-M, MLP-M) under one threshold,
    exactly n_removed of each module's weights, ties by position (as DIMAP's Eq. 10 ranking)."""
    scores = scores if scores is not None else wanda_score_tensors(weights, model, batches)
    scores = {n: s.cpu() for n, s in scores.items()}
    masks = {}
    for module, names in modules_of(weights).items():
        masks.update(masks_for_ratio(scores, [names], _share(ratio, module)))
    return masks
