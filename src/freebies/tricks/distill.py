"""Knowledge distillation (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural
Network", https://arxiv.org/abs/1503.02531).

loss = (1 - alpha) * CE(student, targets) + alpha * T^2 * KL(p_teacher^T || p_student^T),
where p^T = softmax(logits / T). The T^2 factor keeps the soft term's gradient on the same
scale as the hard term's when T changes. Targets are soft rows (mixed and/or smoothed), so the
teacher must see the same mixed batch as the student.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from freebies.tricks.record import Key, Trick


def kd_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    target: torch.Tensor,
    alpha: float,
    temperature: float,
) -> torch.Tensor:
    """Distillation loss, a scalar.

    Args:
        student: student logits (N, K).
        teacher: teacher logits (N, K), computed without grad on the same batch.
        target: soft targets (N, K), rows summing to 1.
        alpha: weight of the distillation term in [0, 1]; 0 is plain cross-entropy.
        temperature: T > 0, the softmax temperature of both distributions.
    """
    if not 0 <= alpha <= 1:
        raise ValueError(f"kd_loss: alpha must be in [0, 1], got {alpha}")
    if not temperature > 0:
        raise ValueError(f"kd_loss: temperature must be > 0, got {temperature}")
    if teacher.shape != student.shape:
        raise ValueError(
            f"kd_loss: teacher logits have shape {tuple(teacher.shape)} but student logits "
            f"{tuple(student.shape)}; distill from a teacher trained on the same classes"
        )
    hard = F.cross_entropy(student, target)
    if alpha == 0:
        return hard
    t = temperature
    soft = F.kl_div(
        F.log_softmax(student / t, dim=1),
        F.log_softmax(teacher / t, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return (1 - alpha) * hard + alpha * t * t * soft


DISTILLATION = Trick(
    "distillation",
    ("classify",),
    (
        Key("distill.teacher", str, note="a freebies checkpoint"),
        Key("distill.alpha", float, "[0, 1]", note="the weight of the soft term"),
        Key("distill.temperature", float, "(0, inf)"),
    ),
    {},
    "Hinton et al. 2015",
    "https://arxiv.org/abs/1503.02531",
    "(1 - a) CE + a T^2 KL(teacher^T || student^T); needs distill.teacher=CKPT",
)
