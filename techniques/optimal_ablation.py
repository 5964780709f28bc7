"""Optimal ablation, node granularity (Li & Janson 2024, "Optimal ablation for interpretability",
NeurIPS 2024).

A node's importance is the loss the model cannot avoid when the node's output is replaced by the
best constant: Δ = min_a E[loss(model with node := a)] − E[loss(model)]. For each head (its
``hook_z`` slice) and MLP (its output), ``mibench.model.ablation.optimal_values`` fits a constant
per position on the first 16 prompts of ``view.train_prompts``, starting from the mean (mean
ablation) and taking 10 Adam steps; the score is that node's loss with its constant patched in,
averaged over the test prompts (the full model's loss is 0). The loss is the squared deviation of
the task metric from the full model's, per prompt (``mibench.model.ablation.squared_deviation``
says why not the paper's KL, nor the metric itself).

Unsigned: the loss is ≥ 0 and counts a push of the metric in either direction, so a node whose
removal raises the metric (a suppressor) scores like one whose removal lowers it; a signed metric
drop would also let a constant that *improves* the metric pass for importance of the other sign.

What it is known to miss:

* whatever a constant can stand in for. A node carrying a constant the task needs (a bias, a
  sink, a fixed query) scores ~0, by design: that is the point of optimal ablation, and what
  ``trap_bias_component`` rewards (its sink head and bias MLP are constant, zero ablation calls
  them essential). A node whose varying output a constant can largely imitate downstream also
  scores low: on ``trap_bias_component`` (medium, seed 0) a constant for the detector MLP that
  flags every position as "marked" lets the mover find the item anyway, and its loss falls from
  57 under mean ablation to ~2 (still far above every non-circuit node, ≤ 0.05). On
  ``trap_suppression`` (medium, seed 0) a constant stands in for the suppressor altogether: its
  loss is 0.004 where mean-ablating it moves the metric by 0.88, and it falls to the noise floor
  (AUROC 0.59; 1.0 on seed 1).
* compensation: like every single-node ablation, a backup component that takes over when its main
  component is removed hides both (``trap_backup``); the optimal constant can make this worse, as
  it is fitted to keep the metric where it was.
* the constants are fitted on 16 train prompts: on the test prompts a node can score above its
  mean ablation's loss (overfitting of the per-position constant).

Hyperparameters (in ``mibench.model.ablation``): ``OPTIMAL_FIT_PROMPTS`` = 16, ``OPTIMAL_STEPS``
= 10, ``OPTIMAL_STEP_SIZE`` = 0.3 node spreads per Adam step. Cost: the fit makes, per block, 10
forward and backward passes and 1 forward of 16 prompts per node from that block onward (≈ 31 ×
16/64 ≈ 8 single-node sweeps of the 64 test prompts); scoring is 1 more sweep of the test prompts.
"""
from mibench.api import CaseView, Technique, make_scores
from mibench.model.ablation import BaseRun, node_values, squared_deviation


class OptimalAblation(Technique):
    name = "optimal_ablation"
    version = "1"
    granularity = "node"
    signed = False
    cost = "≈ 8 single-node sweeps to fit (10 Adam steps on 16 prompts) + 1 to score"
    description = ("replace each node's output by the constant (per position, fitted on the train "
                   "prompts) that best keeps the metric; score the loss that remains")
    citation = "Li & Janson 2024, Optimal ablation for interpretability (NeurIPS 2024)"

    def attribute(self, view: CaseView):
        nodes = view.components()
        constants = node_values(view.model, view.prompts, nodes, "optimal", metric=view.metric,
                                fit_prompts=view.train_prompts)
        base = BaseRun(view.model, view.prompts.clean, view.prompts.positions,
                       read_positions=view.metric.positions)
        loss = squared_deviation(view.metric, view.prompts, base.logits)
        return make_scores(base.single_metrics(nodes, constants, loss))
