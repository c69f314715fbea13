"""Time-sliced interaction and co-interaction sets (SCoRe Section 2, Eq. 2-5), resampled to S.

Every random choice is a hash of ids and ``index.seed`` (Spark's xxhash64, numpy splitmix64),
so the output is a function of (data, seed, S, cap) only: the same on any number of
partitions. One-hop sets are Spark SQL; the co-set unions run in numpy per partition.

Sampling, and how it relates to "uniform over the set"
-------------------------------------------------------
*Interaction sets* G_t(u), G_t(v) (Eq. 2-3, per slice): members are ordered by
``xxhash64(order_salt, entity, member, slice)``, an independent random order per set; the
first S are kept. That is a uniform sample without replacement (random-hash model).

*Co-interaction sets* G_t(v|u), G_t(u|v) (Eq. 4-5, per slice) are the 2-hop neighbours
minus the entity itself. Materialising the unions explodes on hubs (an item seen by 10^5
users in a day puts each of them in 10^5 unions). We never build them: every entity keeps a
*bottom-(S+1) sketch* of its 1-hop list, the S+1 members with the smallest
``h(member, slice) = xxhash64(sketch_salt, member, slice)`` (a hash of the member alone, the
same in every list of that slice). The S smallest-h members of a union minus the entity are
always inside the union of the members' sketches (a member among the S smallest of the union
has at most S-1 smaller ones plus the entity itself ahead of it in any list holding it), so

    co-set = S smallest-h of ((union of the neighbours' sketches) minus the entity)

is *exactly* the S smallest-h members of the true Eq. 4/5 set: a uniform sample without
replacement of size min(S, |set|). Work is at most (S+1) rows per positive (user, item,
slice) triple whatever the degree distribution.

Two departures from independent uniform samples, both deliberate and recorded:
  * The 2-hop union runs over at most ``index.neighbor_cap`` of the entity's 1-hop
    neighbours (the first ``cap`` in its interaction-set order, a uniform subset); entities
    with more neighbours get a uniform sample of the union over that subset, which favours
    co-neighbours reachable through many neighbours. ``capped_lists`` in the manifest counts
    them. This bounds the size of one hub's sort, not the total work (already bounded).
  * Co-sets of different entities in the same slice share h, so their samples are
    coordinated: a member with a small h(member, t) is picked by every co-set holding it.
    Each set alone is uniform; across sets the draws are positively correlated. This is the
    price of computing unions from bounded sketches.

Resampling to exactly S (paper Section 4.1.1, "Implementation Details"): k > S members -> the
sample above; 1 <= k < S -> the k members followed by S-k draws with replacement from them
(draw j picks member ``pmod(xxhash64(fill_salt, entity, slice, j), k)``); k = 0 -> no row for
an interaction set, S zeros (the "empty" id) for an empty co-set in a stored row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from spark_jobs.negatives import splitmix64

ID_MASK = 0xFFFFFFFF  # member ids live in the low 32 bits of a packed (hash, id) long


@dataclass(frozen=True)
class Salts:
    """Independent hash streams derived from ``index.seed`` (one per random choice)."""

    order: int  # random order of an entity's 1-hop list (interaction sample, cap)
    user_sketch: int  # h(user, slice) for sketches of item lists
    item_sketch: int  # h(item, slice) for sketches of user lists
    fill: int  # with-replacement fill of sets smaller than S

    @classmethod
    def of(cls, seed: int) -> Salts:
        return cls(order=seed * 4 + 1, user_sketch=seed * 4 + 2, item_sketch=seed * 4 + 3,
                   fill=seed * 4 + 4)


@dataclass(frozen=True)
class Side:
    """One side of the bipartite graph: ``entity`` rows whose 1-hop lists hold ``member`` ids."""

    entity: str  # "user" or "item"
    member: str  # the other one
    member_sketch_salt: int  # salt of h(member, slice)
    entity_sketch_salt: int  # salt of h(entity, slice): what the other side's sketches use


def sides(salts: Salts) -> tuple[Side, Side]:
    """(user side, item side)."""
    return (Side("user", "item", salts.item_sketch, salts.user_sketch),
            Side("item", "user", salts.user_sketch, salts.item_sketch))


def _packed(hash_col: Column, id_col: Column) -> Column:
    """(hash << 32) | id: sorting the longs sorts by hash, and equal ids stay equal."""
    return F.shiftleft(hash_col, 32).bitwiseOR(id_col.cast("long"))


def _unpacked(arr: Column) -> Column:
    return F.transform(arr, lambda x: x.bitwiseAND(F.lit(ID_MASK)).cast("int"))


def fill_to_size(arr: Column, entity: Column, slc: Column, size: int, salt: int) -> Column:
    """Resample a non-empty list of k distinct ids to exactly ``size`` (k <= size).

    Args:
        arr: array<int> of k >= 1 distinct ids, already cut to at most ``size``.
        entity, slc: the set's key, seeding the with-replacement draws.
        size: S.
        salt: hash salt of the fill draws.

    Returns:
        array<int> of length S: the k ids, then S-k draws with replacement from them.
    """
    k = F.size(arr)
    draws = F.transform(
        F.sequence(F.lit(1), F.lit(size) - k),
        lambda j: F.element_at(arr, F.pmod(F.xxhash64(F.lit(salt), entity, slc, j), k).cast("int") + 1),
    )
    return F.when(k >= size, arr).otherwise(F.concat(arr, draws))


def one_hop(pos: DataFrame, side: Side, salts: Salts, size: int) -> DataFrame:
    """Per (entity, slice): the resampled interaction set and the bottom-(S+1) sketch.

    Args:
        pos: distinct positive (user, item, slice) triples, hash-partitioned by
            (side.entity, slice) so the aggregation needs no shuffle.
        side: which side's sets to build.
        salts: hash salts.
        size: S.

    Returns:
        DataFrame[entity int, slice short, interaction array<int>[S], sketch array<long>
        (<= S+1 members with the smallest h(member, slice), packed ``h << 32 | id``),
        degree long (|G_t(entity)|)],
        partitioned like ``pos``.
    """
    e, m = F.col(side.entity), F.col(side.member)
    by_order = F.array_sort(F.collect_list(
        _packed(F.xxhash64(F.lit(salts.order), e, m, F.col("slice")), m)))
    by_sketch = F.array_sort(F.collect_list(
        _packed(F.xxhash64(F.lit(side.member_sketch_salt), m, F.col("slice")), m)))
    grouped = pos.groupBy(side.entity, "slice").agg(
        by_order.alias("by_order"), by_sketch.alias("by_sketch"), F.count("*").alias("degree"))
    first_s = _unpacked(F.slice("by_order", 1, size))
    return grouped.select(
        e.alias("entity"), "slice",
        fill_to_size(first_s, e, F.col("slice"), size, salts.fill).alias("interaction"),
        F.slice("by_sketch", 1, size + 1).alias("sketch"),
        "degree",
    )


def co_sets(pos: DataFrame, other_hop: DataFrame, side: Side, salts: Salts, size: int,
            cap: int) -> DataFrame:
    """Per (entity, slice): the co-interaction set (Eq. 4 for users, Eq. 5 for items).

    Spark joins each positive triple with its neighbour's sketch and shuffles the rows to
    their (entity, slice); the union, cap, dedupe and bottom-S selection then run vectorised
    in numpy per partition (``co_set_batch``), which is several times cheaper than Spark's
    interpreted higher-order array functions.

    Args:
        pos: distinct positive (user, item, slice) triples, partitioned like ``other_hop``
            (by (side.member, slice)) so the join needs no shuffle.
        other_hop: ``one_hop`` of the other side (its sketches hold ids of side.entity).
        side: which side's co-sets to build.
        salts: hash salts.
        size: S.
        cap: index.neighbor_cap, the most 1-hop neighbours whose sketches enter the union.

    Returns:
        DataFrame[entity int, slice short, co_interaction array<int>[S] (S zeros when the
        set is empty)].
    """
    e, m, slc = F.col(side.entity), F.col(side.member), F.col("slice")
    joined = pos.join(
        other_hop.select(F.col("entity").alias(side.member), "slice", "sketch"),
        [side.member, "slice"],
    ).select(e.alias("entity"), "slice",
             # the neighbour's place in the entity's own random order, so the cap keeps the
             # neighbours the interaction set starts with
             _packed(F.xxhash64(F.lit(salts.order), e, m, slc), m).alias("o"), "sketch")
    fill_seed = salts.fill + 1

    def run(batches):
        parts = [b for b in batches if b.num_rows]
        if parts:  # a partition holds whole groups: gather it, then work on all at once
            yield co_set_batch(pa.Table.from_batches(parts).combine_chunks(), size, cap, fill_seed)

    return joined.repartition("entity", "slice").mapInArrow(run, CO_SCHEMA)


CO_SCHEMA = "entity int, slice short, co_interaction array<int>"


def co_set_batch(table: pa.Table, size: int, cap: int, fill_seed: int) -> pa.RecordBatch:
    """Co-interaction sets of every (entity, slice) group in ``table`` (whole groups only).

    Args:
        table: entity int32, slice int16, o int64 (neighbour order), sketch list<int64>
            (packed ``h << 32 | id`` of the neighbour's bottom-(S+1) members).
        size: S.
        cap: most neighbours per group, the smallest ``o`` first.
        fill_seed: seed of the with-replacement fill.

    Returns:
        RecordBatch of CO_SCHEMA, one row per group: the S smallest-h distinct ids of the
        capped union minus the entity, filled to S with replacement, or S zeros if empty.
    """
    ent = table.column("entity").to_numpy().astype(np.int64)
    slc = table.column("slice").to_numpy().astype(np.int64)
    key = (ent << 16) | slc
    row = np.lexsort((table.column("o").to_numpy(), key))
    key = key[row]
    new = np.r_[True, key[1:] != key[:-1]]
    group = np.cumsum(new) - 1  # group of each sorted row
    starts = np.flatnonzero(new)
    gkey = key[starts]  # (G,)
    kept = (np.arange(len(key)) - starts[group]) < cap
    rows, rgroup = row[kept], group[kept]

    sketch = table.column("sketch").chunk(0)
    offsets = sketch.offsets.to_numpy().astype(np.int64)
    values = sketch.values.to_numpy()
    lengths = offsets[rows + 1] - offsets[rows]
    first = np.repeat(offsets[rows] - (np.cumsum(lengths) - lengths), lengths)
    packed = values[first + np.arange(lengths.sum())]  # (E,) members of the capped union
    egroup = np.repeat(rgroup, lengths)
    own = (packed & ID_MASK) == (gkey[egroup] >> 16)
    packed, egroup = packed[~own], egroup[~own]
    order = np.lexsort((packed, egroup))  # by group, then h (then id)
    packed, egroup = packed[order], egroup[order]
    first_of = np.r_[True, (egroup[1:] != egroup[:-1]) | (packed[1:] != packed[:-1])]
    packed, egroup = packed[first_of], egroup[first_of]
    gnew = np.r_[True, egroup[1:] != egroup[:-1]]
    rank = np.arange(len(egroup)) - np.flatnonzero(gnew)[np.cumsum(gnew) - 1]
    top = rank < size
    n_groups = len(gkey)
    out = np.zeros((n_groups, size), dtype=np.int32)
    out[egroup[top], rank[top]] = (packed[top] & ID_MASK).astype(np.int32)
    k = np.bincount(egroup[top], minlength=n_groups)  # (G,) distinct members kept
    # Sets of 1 <= k < S: columns k.. are draws with replacement from the first k.
    col = np.arange(size, dtype=np.uint64)
    bits = splitmix64(splitmix64(gkey.astype(np.uint64) ^ np.uint64(fill_seed))[:, None] ^ col)
    pick = (bits % np.maximum(k, 1).astype(np.uint64)[:, None]).astype(np.int64)
    fill = (col[None, :] >= k[:, None].astype(np.uint64)) & (k[:, None] > 0)
    out = np.where(fill, np.take_along_axis(out, pick, axis=1), out)
    return pa.RecordBatch.from_arrays(
        [pa.array((gkey >> 16).astype(np.int32)), pa.array((gkey & 0xFFFF).astype(np.int16)),
         pa.ListArray.from_arrays(pa.array(np.arange(n_groups + 1, dtype=np.int32) * size),
                                  pa.array(out.ravel()))],
        names=["entity", "slice", "co_interaction"])


def exact_sets(pos: DataFrame) -> tuple[DataFrame, DataFrame]:
    """The un-resampled sets of Eq. 2-5 per slice, for checking the sampled ones (tests, audits).

    Quadratic on hubs: only for small data.

    Args:
        pos: distinct positive (user, item, slice) triples.

    Returns:
        (users, items): DataFrame[entity, slice, interaction array (sorted), co_interaction
        array (sorted, may be empty)] for each side.
    """
    out = []
    for entity, member in (("user", "item"), ("item", "user")):
        hop = pos.select(F.col(entity).alias("e"), F.col(member).alias("m"), "slice")
        back = pos.select(F.col(member).alias("m"), F.col(entity).alias("e2"), "slice")
        two = hop.join(back, ["m", "slice"]).where("e2 != e")
        inter = hop.groupBy("e", "slice").agg(F.array_sort(F.collect_set("m")).alias("interaction"))
        co = two.groupBy("e", "slice").agg(F.array_sort(F.collect_set("e2")).alias("co_interaction"))
        table = inter.join(co, ["e", "slice"], "left").select(
            F.col("e").alias("entity"), "slice", "interaction",
            F.coalesce("co_interaction", F.array().cast("array<int>")).alias("co_interaction"))
        out.append(table)
    return out[0], out[1]
