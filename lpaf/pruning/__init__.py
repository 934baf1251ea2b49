"""Unstructured pruning of the encoder linears (docs/METHOD.md, Stage 1), one module per concept:

- :mod:`~lpaf.pruning.schedule`: the cubic keep-ratio schedule v(t) and ``keep_count``;
- :mod:`~lpaf.pruning.topk`: top-k keep masks with deterministic ties;
- :mod:`~lpaf.pruning.masked_weight`: the ``W ⊙ M`` parametrization that owns a matrix's state;
- :mod:`~lpaf.pruning.criteria`: the importance criteria (magnitude, movement, soft movement,
  PLATON per-step and PLATON as its reference implementation runs it);
- :mod:`~lpaf.pruning.pruner`: the :class:`Pruner` (masks, schedule, resume) and its Trainer callback.

Every encoder linear weight W (Q, K, V, attention-output, FFN-in, FFN-out) is parametrized with
``torch.nn.utils.parametrize``; M is a 0/1 ``keep_mask`` buffer chosen from the criterion's importance.
"""

from lpaf.pruning.criteria import (PLATON_DEFAULT_BETAS, PLATON_REFERENCE_BETAS, PLATON_REFERENCE_WINDOW, Criterion,
                                   Magnitude, Movement, PlatonPerStep, PlatonReference, SoftMovement, platon_betas_for)
from lpaf.pruning.masked_weight import MaskedWeight
from lpaf.pruning.pruner import (LEARNED_SCORE_METHODS, METHODS, PLATON_MODES, SCOPES, SCORE_INITS, PlatonMode,
                                 PruneMethod, Pruner, PruneScope, PruningCallback, ScoreInit, check_settings,
                                 make_criterion)
from lpaf.pruning.schedule import CubicSchedule, keep_count
from lpaf.pruning.topk import topk_mask

__all__ = [
    "CubicSchedule", "Criterion", "LEARNED_SCORE_METHODS", "METHODS", "Magnitude", "MaskedWeight", "Movement",
    "PLATON_DEFAULT_BETAS", "PLATON_MODES", "PLATON_REFERENCE_BETAS", "PLATON_REFERENCE_WINDOW", "PlatonMode",
    "PlatonPerStep", "PlatonReference", "PruneMethod", "PruneScope", "Pruner", "PruningCallback", "SCOPES",
    "SCORE_INITS", "ScoreInit", "SoftMovement", "check_settings", "keep_count", "make_criterion", "platon_betas_for",
    "topk_mask",
]
