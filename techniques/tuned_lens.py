"""Tuned lens, layer granularity (Belrose et al. 2023, "Eliciting Latent Predictions from
Transformers with the Tuned Lens").

The logit lens assumes every layer already speaks the unembedding's basis. The tuned lens learns,
for each depth ``l`` (the residual before block 0, then after each block but the last), an affine
*translator* ``h ↦ A_l h + b_l`` (``d_model × d_model`` plus a bias, initialised to the identity and
zero) such that ``decode(A_l h_l + b_l)`` matches the model's final output distribution. The final
depth's translator is the identity: it is the model's real output. Each translator minimises

    KL(softmax(final logits) ‖ softmax(decode(A_l h_l + b_l)))

averaged over every position of ``view.train_prompts.clean``, where ``decode`` is the model's real
final norm and unembedding (``mibench.model.readout.decode``). The test prompts are then scored exactly as
by the logit lens: layer ``L{l}`` scores ``metric(depth l + 1) − metric(depth l)`` on the
translated, decoded residuals (signed; scoring ranks by magnitude).

Because a translator can read features that are not yet in the unembedding's basis, the tuned
lens finds where the answer becomes *linearly decodable* (by a map fitted to the final output),
which can be earlier than the layer that writes it into the logits.

Hyperparameters: Adam, learning rate ``LR`` = 1e-2, ``STEPS`` = 100 full-batch steps per
translator, no weight decay, parameters initialised to identity / zero, training seeded from
``view.seed`` (the translators' order of operations is fixed, so the result is deterministic on
CPU). Belrose et al. train with SGD + Nesterov over many more tokens; the suite's models are small
and their train split is about a thousand tokens, so full-batch Adam converges in ~100 steps (on
induction and planted_trigger the training KL after 100 steps at 1e-2 is within ~5 % of 300 steps).

Cost: 2 forward passes (one on the train prompts to cache every depth's residual and the final
logits, one on the test prompts); the translators are then trained on the cached tensors, which is
no model pass (the passes counter sees 2).
"""
import torch

from mibench.api import CaseView, Technique, make_scores
from mibench.model.readout import cache_residuals, decode, lens_gains

LR = 1e-2
STEPS = 100


def train_translator(model, resid: torch.Tensor, target_logprobs: torch.Tensor, seed: int
                     ) -> torch.nn.Linear:
    """An affine map ``d_model → d_model`` (identity / zero at the start) trained so that decoding
    its output matches ``target_logprobs`` in KL(target ‖ lens). ``resid`` is ``[tokens, d_model]``."""
    d = resid.shape[-1]
    with torch.random.fork_rng():  # seeded without disturbing the caller's generator
        torch.manual_seed(seed)  # (the identity / zero start leaves nothing random today)
        translator = torch.nn.Linear(d, d)
    with torch.no_grad():
        translator.weight.copy_(torch.eye(d))
        translator.bias.zero_()
    optimizer = torch.optim.Adam(translator.parameters(), lr=LR)
    target = target_logprobs.exp()
    for _ in range(STEPS):
        optimizer.zero_grad()
        lens_logprobs = torch.log_softmax(decode(model, translator(resid)), dim=-1)
        loss = (target * (target_logprobs - lens_logprobs)).sum(-1).mean()
        loss.backward()
        optimizer.step()
    return translator.requires_grad_(False)


class TunedLens(Technique):
    name = "tuned_lens"
    version = "1"
    granularity = "layer"
    signed = True
    cost = "2 forward + translator training on cached residuals"
    description = "logit lens through affine translators trained (KL to the final output) per layer"
    citation = "Belrose et al. 2023, Eliciting Latent Predictions from Transformers with the Tuned Lens"

    def attribute(self, view: CaseView):
        model = view.model
        train_logits, train_resid = cache_residuals(model, view.train_prompts.clean)
        d_model = train_resid[0].shape[-1]
        target = torch.log_softmax(train_logits.reshape(-1, train_logits.shape[-1]), dim=-1)
        # W_U and the norm take part in the loss; they must not collect gradients (weights unchanged)
        frozen = [p for p in model.parameters() if p.requires_grad]
        for p in frozen:
            p.requires_grad_(False)
        try:
            translators = [train_translator(model, r.reshape(-1, d_model), target, view.seed * 1000 + l)
                           for l, r in enumerate(train_resid[:-1])]
        finally:
            for p in frozen:
                p.requires_grad_(True)
        logits, residuals = cache_residuals(model, view.prompts.clean)
        with torch.no_grad():
            decoded = [decode(model, t(r)) for t, r in zip(translators, residuals[:-1])] + [logits]
        return make_scores(lens_gains(view, decoded))
