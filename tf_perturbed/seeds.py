"""Stateless seeds: the forms every op accepts, and how layers derive one per call and replica.

Every random draw in tf_perturbed is a stateless one with an explicit `int32[2]`
seed. A layer or loss seeded with s draws its k-th seed as
`per_replica(sanitize_seed(g.next()))` for the k-th `next()` of
`keras.random.SeedGenerator(s)` (`next_seed(g)`); a custom training loop that
wants the same noise calls the ops with those seeds.
"""

from tf_perturbed._src.base.seeds import fold_in, next_seed, per_replica, sanitize_seed, split

__all__ = ["fold_in", "next_seed", "per_replica", "sanitize_seed", "split"]
