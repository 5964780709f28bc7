"""Linear probe, site granularity (Alain & Bengio 2016, "Understanding intermediate layers using
linear classifier probes"; caveats after Belinkov 2022, "Probing Classifiers: Promises,
Shortcomings, and Advances").

For every residual site ``r{l}@{label}`` (``blocks.{l}.hook_resid_pre`` at each prompt's position of
``label``; ``r{n_layers}`` is the final residual) and every variable the case declares in
``prompts.variables``, a scikit-learn ``LogisticRegression`` is fitted on the train split's clean
residuals at that site ``[n, d_model]`` (standardised with the train split's mean and scale) to
predict the variable, and evaluated on the test split. A site scores its held-out accuracy minus
chance (the majority class's share of the test split), maximised over variables; a site where no
variable varies (in train or test) scores 0.

What a probe measures is *decodability*, not use: a site can carry a variable that nothing
downstream reads (Belinkov 2022; Ravichander et al. 2021), and a probe will flag it as surely as a
site on the causal path. Unsigned.

Hyperparameters: ``C`` = 1.0 (L2), solver lbfgs, ``max_iter`` = 2000, ``random_state`` = the view's
seed, features standardised (``StandardScaler``). Cost: 2 forward passes (train and test prompts,
one cached pass each) plus one logistic regression per (site, variable).
"""
import numpy as np
import torch

from mibench.api import CaseView, Technique, make_scores
from mibench.model.ablation import cache_nodes

C = 1.0
MAX_ITER = 2000


def _site_values(view: CaseView, prompts, sites: list[str]) -> dict[str, np.ndarray]:
    _, values = cache_nodes(view.model, prompts.clean, sites, prompts.positions)
    return {s: v.detach().to(torch.float64).numpy() for s, v in values.items()}


def probe_accuracy_above_chance(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                                y_test: np.ndarray, seed: int) -> float:
    """Held-out accuracy of a logistic-regression probe minus the test split's majority share
    (the variable must take at least two values in each split; see :func:`varies`)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(),
                          LogisticRegression(C=C, max_iter=MAX_ITER, random_state=seed))
    probe.fit(x_train, y_train)
    accuracy = float((probe.predict(x_test) == y_test).mean())
    chance = float(np.unique(y_test, return_counts=True)[1].max() / len(y_test))
    return accuracy - chance


def varies(y_train: np.ndarray, y_test: np.ndarray) -> bool:
    return len(np.unique(y_train)) >= 2 and len(np.unique(y_test)) >= 2


class LinearProbe(Technique):
    name = "linear_probe"
    version = "1"
    granularity = "site"
    signed = False
    cost = "2 forward + one logistic regression per (site, variable)"
    description = "held-out accuracy above chance of a logistic-regression probe for each variable"
    citation = "Alain & Bengio 2016; Belinkov 2022"

    def attribute(self, view: CaseView):
        sites = view.components("site")
        train, test = view.train_prompts, view.prompts
        variables = [v for v in test.variables if v in train.variables
                     and varies(train.variables[v].numpy(), test.variables[v].numpy())]
        if not variables or not sites:
            return make_scores({s: 0.0 for s in sites})
        x_train, x_test = _site_values(view, train, sites), _site_values(view, test, sites)
        scores = {}
        for site in sites:
            scores[site] = max(
                probe_accuracy_above_chance(x_train[site], train.variables[v].numpy(),
                                            x_test[site], test.variables[v].numpy(), view.seed)
                for v in variables)
        return make_scores(scores)
