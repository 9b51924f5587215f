""":class:`tb_bnstats.capture.ring.Ops` in ``jax.numpy``, for the captures
that pack a ring's row inside a JAX computation (traced: XLA fuses the
concatenation into the step or the row write). Importing this module
imports no JAX; the functions do, when called."""

from collections.abc import Sequence
from typing import Any


class JaxOps:
    """The ring's two operations (:class:`tb_bnstats.capture.ring.Ops`) in ``jax.numpy``."""

    def vector(self, parts: Sequence[Any], dtype: str, out: Any = None) -> Any:
        """``parts`` cast to ``dtype`` and joined into one 1-D (``out`` is ignored: JAX arrays are immutable)."""
        import jax.numpy as jnp

        if not parts:
            return jnp.zeros([0], dtype)
        return jnp.concatenate([jnp.reshape(jnp.asarray(p, dtype), [-1]) for p in parts])

    def bitcast_pairs(self, vector: Any) -> Any:
        """A float32 1-D of even length as the float64 1-D of the same bytes."""
        import jax
        import jax.numpy as jnp

        return jax.lax.bitcast_convert_type(jnp.reshape(vector, [-1, 2]), jnp.float64)


JAX_OPS = JaxOps()
