"""The loss ``bertbeam distill`` trains the student with (Trainer's ``compute_loss``).

- **Soft labels** (Hinton et al. 2015): T² · KL(teacher_T ‖ student_T), both distributions
  softened by the temperature T; the teacher's logits come from its ``bertbeam label`` run
  (``teacher_logits`` in the batch).
- **Gold labels**: on rows with one (``labels`` >= 0), ``gold_weight`` of the loss is the
  cross-entropy against it instead.
- **Intermediate layers** (TinyBERT, Jiao et al. 2020): the mean squared error between the
  student's embedding output and each of its layers' outputs and the teacher's at the same
  places (``layer_map``: student layer -> teacher layer), over real tokens, summed over the
  layers and weighted ``hidden_weight``. A student that is the teacher's own layers starts
  with the same shapes, so no projection is needed. The teacher runs on the batch for
  this (its hidden states are too large to keep beside the logits).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def distillation_loss(temperature: float, gold_weight: float, *, teacher: Any = None,
                      layer_map: list[int] | None = None, hidden_weight: float = 0.0
                      ) -> Callable[[Any, dict[str, Any]], tuple[Any, Any]]:
    """``loss_fn(model, inputs) -> (loss, outputs)`` for Trainer. ``teacher`` (in eval mode,
    on the student's device) and ``layer_map`` (the teacher layer, counted from 1, of each
    student layer) turn on the intermediate-layer term when ``hidden_weight`` > 0."""
    import torch  # the model stack loads where it is used (start-up)
    import torch.nn.functional as F  # the model stack loads where it is used (start-up)

    layers = hidden_weight > 0 and teacher is not None and layer_map is not None
    pairs = [(0, 0)] + [(i + 1, t) for i, t in enumerate(layer_map or [])]

    def loss_fn(model: Any, inputs: dict[str, Any]) -> tuple[Any, Any]:
        inputs = dict(inputs)
        teacher_logits = inputs.pop("teacher_logits")
        labels = inputs.pop("labels", None)
        # in training only: evaluation measures agreement, and its outputs must be the logits
        matched = layers and model.training
        outputs = model(**inputs, output_hidden_states=matched)
        student = outputs.logits
        t = temperature
        kl = F.kl_div(F.log_softmax(student / t, dim=-1), F.log_softmax(teacher_logits / t, dim=-1),
                      reduction="none", log_target=True).sum(-1) * (t * t)
        loss = kl
        if labels is not None and gold_weight > 0:
            has_gold = labels >= 0
            ce = F.cross_entropy(student, labels.clamp(min=0), reduction="none")
            loss = torch.where(has_gold, (1 - gold_weight) * kl + gold_weight * ce, kl)
        loss = loss.mean()
        if matched:
            with torch.no_grad():
                expected = teacher(**inputs, output_hidden_states=True).hidden_states
            loss = loss + hidden_weight * hidden_state_loss(
                outputs.hidden_states, expected, pairs, inputs.get("attention_mask"))
            outputs.hidden_states = None
        return loss, outputs

    return loss_fn


def hidden_state_loss(student: Any, teacher: Any, pairs: list[tuple[int, int]], mask: Any) -> Any:
    """Sum over ``pairs`` (student index, teacher index into the hidden-state tuples) of
    the mean squared error over the real tokens (``mask`` 1) and the hidden dimensions."""
    import torch  # the model stack loads where it is used (start-up)

    first = student[0]
    weight = (torch.ones(first.shape[:2], device=first.device) if mask is None
              else mask.to(first.dtype)).unsqueeze(-1)
    denominator = weight.sum() * first.shape[-1]
    total = first.new_zeros(())
    for s, t in pairs:
        total = total + ((student[s] - teacher[t].to(student[s].dtype)) ** 2 * weight).sum() / denominator
    return total
