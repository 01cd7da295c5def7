"""dpeq.audit: empirical lower bounds on the epsilon of a DP-SGD run.

  python -m dpeq.audit --config=experiments/configs/fashion_mnist.py
  make audit

trains the configured model with canaries and reports, next to the
accountant's epsilon, the empirical lower bounds of Steinke et al. (one run)
and Clopper-Pearson (dpeq.audit.engine_audit). The statistics are
jax_privacy.auditing's; canary generation and insertion are dpeq's own
(dpeq.audit.canaries).
"""

from dpeq.audit.canaries import CanarySet, gradient_canaries, input_canaries
from dpeq.audit.engine_audit import AuditResult, audit, bounds

__all__ = ["AuditResult", "CanarySet", "audit", "bounds", "gradient_canaries",
           "input_canaries"]
