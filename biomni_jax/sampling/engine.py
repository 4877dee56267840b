"""The inference engine: continuous batching over a fixed number of KV-cache slots, in its own thread.

    engine = Engine(config, params, mesh, num_slots=8, max_len=4096, detokenize=tokenizer.decode)
    s = engine.open_session()
    c = engine.submit(s, prompt_ids, SamplingParams(temperature=0.6, top_p=0.95, stop=("</execute>",))).result()
    c = engine.submit(s, observation_ids, params).result()   # prefills only the new tokens
    engine.close_session(s)

A session is the token history of one episode (every id fed or sampled) plus, while it holds one, a
cache slot whose first `cached` positions hold the history's K/V. Between turns a session keeps its slot;
when a request needs a slot and none is free, the least recently used idle session loses its slot (so
there may be more sessions than slots). Its K/V prefix is copied to host memory first (up to
`host_offload_bytes` in all, least recently used copies dropped first) and copied back into whichever
slot it gets next; a session without a copy re-prefills its history.

Each loop iteration: apply queued commands (submits, closes, weight updates), give slots to waiting
requests, prefill one chunk (at most `max_prefill_chunk` tokens) of every slot that has tokens to
prefill, then one decode step over all slots. A request's chunk is padded to the smallest bucket of
`kv_cache.prefill_buckets` that holds it; the chunks of one bucket (up to `max_prefill_rows` of them) go
to the device in one call, which runs them one after another (`steps.prefill_rows`), so a request's
numbers never depend on what else is prefilled with it. One bucket's chunks ride in the same device call
as the decode step (`steps.prefill_decode`; the bucket with the most prompt-completing chunks), so an
iteration that admits a turn costs one dispatch and one host sync, not two; other buckets, and prefill
with nothing to decode, get calls of their own. A request whose prompt completes decodes in the same
iteration either way. Failures stay local: a bad request or a failing callback fails that
request's future; a failing device step fails the requests it carried, rebuilds the cache, and sessions
re-prefill. The thread itself never exits until `shutdown`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import logging
import queue
import threading
import time
from concurrent.futures import Future
from typing import Callable, Optional, Sequence

import jax
import numpy as np

from biomni_jax import model as M
from biomni_jax.sampling import kv_cache
from biomni_jax.sampling.decode import unstack_layers
from biomni_jax.sampling.params import Completion, SamplingParams
from biomni_jax.sampling.sampler import seed_key_data
from biomni_jax.sampling.steps import DecodeRows, PrefillRows, StepCompiler
from biomni_jax.sampling.stop import StopMatcher
from biomni_jax.sharding import ShardingRules, platform_of

log = logging.getLogger(__name__)


@dataclasses.dataclass(eq=False)
class Session:
  """A handle from `Engine.open_session`. Its fields belong to the engine thread; read, never write."""

  id: int
  history: list = dataclasses.field(default_factory=list)
  slot: Optional[int] = None
  cached: int = 0
  busy: bool = False
  closed: bool = False
  last_used: int = 0
  offloaded: Optional[tuple] = (
      None  # host (k, v) [L, P, K, D] of the first `offloaded_len` positions
  )
  offloaded_len: int = 0


@dataclasses.dataclass(eq=False)
class _Request:
  session: Session
  new_tokens: list
  params: SamplingParams
  future: Future
  matcher: Optional[StopMatcher] = None
  key_data: Optional[np.ndarray] = None
  state: str = "waiting"  # waiting -> prefill -> decode
  history_before: int = 0
  tokens: list = dataclasses.field(default_factory=list)
  logprobs: list = dataclasses.field(default_factory=list)
  versions: list = dataclasses.field(default_factory=list)
  prefilled: int = 0


class Engine:
  """See the module docstring. Thread-safe: `submit`, `open_session`, `close_session`, `update_params`."""

  def __init__(
      self,
      config: M.ModelConfig,
      params,
      mesh=None,
      num_slots: int = 8,
      max_len: int = 4096,
      *,
      detokenize: Optional[Callable[[Sequence[int]], str]] = None,
      max_prefill_chunk: int = 256,
      min_prefill_bucket: int = 16,
      decode_block: int = 128,
      max_prefill_rows: Optional[int] = None,
      host_offload_bytes: int = 4 << 30,
      version: int = 0,
      start: bool = True,
  ):
    if num_slots < 1 or max_len < 2:
      raise ValueError(
          f"Engine needs num_slots >= 1 and max_len >= 2, found {num_slots}, {max_len}"
      )
    self.config, self.num_slots, self.max_len = config, int(num_slots), int(max_len)
    self.rules = mesh if isinstance(mesh, ShardingRules) or mesh is None else ShardingRules(mesh)
    self.detokenize = detokenize
    self.buckets = kv_cache.prefill_buckets(
        min(min_prefill_bucket, max_prefill_chunk), max_prefill_chunk
    )
    self.max_prefill_rows = min(max_prefill_rows or self.num_slots, self.num_slots)
    self.cache_len = kv_cache.cache_length(self.max_len, max_prefill_chunk, decode_block)
    self.offload_buckets = kv_cache.prefill_buckets(
        min(decode_block, self.cache_len), self.cache_len
    )
    self.host_offload_bytes = int(host_offload_bytes)
    self._offloaded: dict[int, Session] = (
        {}
    )  # session id -> session holding a host copy, oldest first
    self._param_shardings = None if self.rules is None else M.param_shardings(config, self.rules)
    self._cast = jax.jit(
        lambda tree: jax.tree.map(lambda x: x.astype(config.compute_dtype), tree),
        out_shardings=self._param_shardings,
    )
    self._unstacked = platform_of(self.rules) == "cpu"
    self._params, self._version = self._place(params), int(version)
    self._param_shapes = jax.tree.map(lambda x: x.shape, self._params)
    self._decode_params = self._for_decode(self._params)
    self._steps = StepCompiler(config, self.rules, decode_block)
    self._cache = kv_cache.allocate_cache(config, self.num_slots, self.cache_len, self.rules)
    self._slot_owner: list[Optional[Session]] = [None] * self.num_slots
    self._waiting: list[_Request] = []
    self._active: list[_Request] = []
    self._commands: queue.Queue = queue.Queue()
    self._ids = itertools.count()
    self._clock = itertools.count()
    self._stopping = False
    self._release_requests: list[Future] = []
    self.stats = dict(
        decode_steps=0,
        decoded_tokens=0,
        prefill_calls=0,
        fused_prefills=0,
        prefill_chunks=0,
        prefilled_tokens=0,
        evictions=0,
        offloads=0,
        restored_tokens=0,
        step_failures=0,
        request_failures=0,
        admit_seconds=0.0,
        prefill_seconds=0.0,
        decode_seconds=0.0,
        idle_seconds=0.0,
    )
    self._thread = threading.Thread(target=self._run, name="biomni-sampling-engine", daemon=True)
    if start:
      self._thread.start()

  # ------------------------------------------------------------------------------------------ public API

  @property
  def compilations(self) -> list:
    """[(kind, shape)] of every program compiled so far (prefill buckets and the decode step)."""
    return list(self._steps.compiled)

  @property
  def version(self) -> int:
    """The weight version of the next decode step (updated in the engine thread)."""
    return self._version

  @property
  def params(self):
    """The weights the engine samples with (as swapped in by the engine thread), stacked layout."""
    return self._params

  def precompile(self) -> None:
    """Compiles every prefill bucket's programs and the decode step now (otherwise each compiles on first
    use, stalling the loop for the compile time). Call before submitting; host offload copies still
    compile per prefix bucket on first use."""
    self._steps.precompile(
        self._params, self._decode_params, self._cache, self.max_prefill_rows, self.buckets
    )

  def is_alive(self) -> bool:
    return self._thread.is_alive()

  def open_session(self) -> Session:
    return Session(id=next(self._ids))

  def submit(
      self,
      session: Session,
      new_token_ids: Sequence[int],
      sampling_params: Optional[SamplingParams] = None,
  ) -> Future:
    """Appends `new_token_ids` to the session and samples a turn; the future holds a `Completion`."""
    future: Future = Future()
    if self._stopping:
      future.set_exception(RuntimeError("Engine.submit: the engine has been shut down"))
      return future
    tokens = [int(t) for t in np.asarray(new_token_ids, dtype=np.int64).reshape(-1)]
    self._commands.put(
        ("submit", _Request(session, tokens, sampling_params or SamplingParams(), future))
    )
    return future

  def generate(
      self, prompt_ids: Sequence[int], sampling_params: Optional[SamplingParams] = None
  ) -> Future:
    """A one-turn session, closed when the turn finishes."""
    session = self.open_session()
    future = self.submit(session, prompt_ids, sampling_params)
    future.add_done_callback(lambda _: self.close_session(session))
    return future

  def close_session(self, session: Session) -> None:
    self._commands.put(("close", session))

  def update_params(self, params, version: int) -> None:
    """New weights for every decode step after the current one; tokens record `version`.

    Same structure and shapes as the current params (so nothing recompiles); any float dtype (the
    engine keeps them in the compute dtype). K/V already in a session's cache stay as computed by the
    older params. On CPU the engine keeps the stacked params (prefill) and a per-layer copy (decode),
    i.e. twice the weights' memory; on accelerators one copy.
    """
    old = self._param_shapes
    new = jax.tree.map(lambda x: x.shape, params)
    if jax.tree.structure(old) != jax.tree.structure(new) or old != new:
      raise ValueError(
          "Engine.update_params: params differ from the engine's in structure or shape; "
          f"expected {old}, found {new}"
      )
    placed = self._place(params)
    self._commands.put(("params", placed, self._for_decode(placed), int(version)))

  def release_memory(self) -> Future:
    """Frees the KV cache and the weights as soon as no request is running (colocated RL: the train step
    gets the chips' memory). Requests submitted meanwhile wait; the next `update_params` brings weights
    and an empty cache back, and sessions re-prefill their history. The future resolves once freed.
    """
    future: Future = Future()
    self._commands.put(("release", future))
    return future

  def shutdown(self, wait: bool = True) -> None:
    self._commands.put(("stop",))
    if wait and self._thread.is_alive():
      self._thread.join()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.shutdown()

  # ------------------------------------------------------------------------------------------ the loop

  def _for_decode(self, params):
    """The decode step's weights: on CPU a per-layer copy (`decode.unstack_layers`: slicing the stacked
    weights inside the step copies every weight each token there), elsewhere the stacked params
    themselves (XLA reads a static layer slice in place; no second copy of the weights)."""
    return unstack_layers(params) if self._unstacked else params

  def _place(self, params):
    """The params on the engine's devices in the compute dtype: every use casts a weight to it before
    multiplying (model.qwen3, decode.py), so a bfloat16 model samples exactly as from float32 weights,
    in half the memory."""
    dtype = self.config.compute_dtype
    placed = jax.device_put(params, self._param_shardings)
    if all(x.dtype == dtype for x in jax.tree.leaves(placed)):
      return placed
    return self._cast(placed)

  def _run(self) -> None:
    while True:
      try:
        t0 = time.perf_counter()
        self._drain_commands(block=self._cache is None or not (self._waiting or self._active))
        if self._stopping:
          self._fail_all(RuntimeError("the engine was shut down before this request finished"))
          return
        if self._release_requests and not self._active:
          self._release()
        if self._cache is None:  # released: wait for new weights
          continue
        t1 = time.perf_counter()
        self._admit()  # includes host offload / restore of evicted sessions' K/V
        t2 = time.perf_counter()
        fused = self._prefill_some()
        t3 = time.perf_counter()
        if fused is None:
          self._decode_once()
        else:
          self._prefill_decode(*fused)
        t4 = time.perf_counter()
        stats = self.stats
        stats["idle_seconds"] += t1 - t0
        stats["admit_seconds"] += t2 - t1
        stats["prefill_seconds"] += t3 - t2
        stats["decode_seconds"] += t4 - t3
      except Exception as exc:  # noqa: BLE001 - the loop must survive anything a step throws
        log.exception(
            "sampling engine: step failed; failing the requests in flight and rebuilding the cache"
        )
        self.stats["step_failures"] += 1
        self._recover(exc)

  def _drain_commands(self, block: bool) -> None:
    try:
      command = self._commands.get(block=block)
    except queue.Empty:
      return
    while True:
      kind = command[0]
      if kind == "submit":
        self._waiting.append(command[1])
      elif kind == "close":
        self._close(command[1])
      elif kind == "params":
        self._params, self._decode_params, self._version = command[1], command[2], command[3]
        if self._cache is None:
          self._cache = kv_cache.allocate_cache(
              self.config, self.num_slots, self.cache_len, self.rules
          )
      elif kind == "release":
        self._release_requests.append(command[1])
      elif kind == "stop":
        self._stopping = True
      try:
        command = self._commands.get_nowait()
      except queue.Empty:
        return

  def _release(self) -> None:
    """Drops the cache and weights (see release_memory); sessions keep their slots with nothing cached."""
    made = [self._cache] + ([self._decode_params["layers"]] if self._unstacked else [])
    for x in jax.tree.leaves(made):  # buffers the engine made
      x.delete()
    # The weights may be the caller's own arrays (placed without a copy): dropped, not deleted.
    self._cache = self._params = self._decode_params = None
    for owner in self._slot_owner:
      if owner is not None:
        owner.cached = 0
    self.stats["releases"] = self.stats.get("releases", 0) + 1
    for future in self._release_requests:
      future.set_result(None)
    self._release_requests = []

  def _close(self, session: Session) -> None:
    session.closed = True
    self._drop_offload(session)
    if not session.busy:
      self._release_slot(session)

  def _release_slot(self, session: Session) -> None:
    if session.slot is not None:
      self._slot_owner[session.slot] = None
    session.slot, session.cached = None, 0

  # -------------------------------------------------------------------------------- admission / prefill

  def _validate(self, req: _Request) -> Optional[str]:
    """Returns an error message, or None when the request may run."""
    s = req.session
    if not isinstance(s, Session):
      return f"submit expects a Session from open_session(), found {type(s).__name__}"
    if s.closed:
      return f"session {s.id} is closed"
    if s.busy:
      return f"session {s.id} already has a turn in flight; wait for its Completion before submitting again"
    if not req.new_tokens and not s.history:
      return f"session {s.id} is empty and the request has no tokens to condition on"
    bad = [t for t in req.new_tokens if not 0 <= t < self.config.vocab_size]
    if bad:
      return f"token ids must be in [0, {self.config.vocab_size}), found {bad[:5]}"
    return None

  def _admit(self) -> None:
    still_waiting = []
    self._waiting.sort(
        key=lambda r: r.params.priority
    )  # stable: arrival order among equal priorities
    for req in self._waiting:
      if req.future.done():  # cancelled by the caller
        continue
      try:
        error = self._validate(req)
        if error is not None:
          self._fail(req, ValueError(f"Engine.submit: {error}"), count=False)
          continue
        s = req.session
        if len(s.history) + len(req.new_tokens) >= self.max_len:
          req.future.set_result(Completion((), (), "length", None, stop_reason="max_len"))
          continue
        if s.slot is None and not self._assign_slot(s):
          still_waiting.append(req)
          continue
        req.matcher = StopMatcher(req.params.stop, self.detokenize)
        req.key_data = seed_key_data(req.params.seed)
        req.history_before = len(s.history)
        s.history.extend(req.new_tokens)
        s.cached = min(
            s.cached, len(s.history) - 1
        )  # at least one token to feed: its logits start the turn
        s.busy, s.last_used = True, next(self._clock)
        req.state = "prefill"
        self._active.append(req)
      except Exception as exc:  # noqa: BLE001
        self._fail(req, exc)
    self._waiting = still_waiting

  def _assign_slot(self, session: Session) -> bool:
    free = [i for i, owner in enumerate(self._slot_owner) if owner is None]
    if not free:
      idle = [o for o in self._slot_owner if o is not None and not o.busy]
      if not idle:
        return False
      self._offloaded.pop(
          session.id, None
      )  # its own copy is about to be used: not the victim's room
      victim = min(idle, key=lambda o: o.last_used)
      free = [victim.slot]
      self._offload(victim)
      self._release_slot(victim)
      self.stats["evictions"] += 1
    session.slot, session.cached = free[0], 0
    self._slot_owner[free[0]] = session
    self._restore(session)
    return True

  # ------------------------------------------------------------------------------ host offload of K/V

  def _offload_bucket(self, length: int) -> int:
    return next(b for b in self.offload_buckets if b >= length)

  def _offload(self, session: Session) -> None:
    """Copies the evicted session's valid K/V prefix to host memory, within `host_offload_bytes`."""
    n = session.cached
    if n <= 0 or self.host_offload_bytes <= 0:
      return
    bucket = self._offload_bucket(n)
    k, v = self._steps.read_slot(self._cache, session.slot, bucket)
    nbytes = 2 * k.size * k.dtype.itemsize
    if nbytes > self.host_offload_bytes:
      return
    while self._offloaded and self._offloaded_bytes() + nbytes > self.host_offload_bytes:
      self._drop_offload(next(iter(self._offloaded.values())))
    session.offloaded, session.offloaded_len = (np.asarray(k), np.asarray(v)), n
    self._offloaded[session.id] = session
    self.stats["offloads"] += 1

  def _offloaded_bytes(self) -> int:
    return sum(x.nbytes for s in self._offloaded.values() for x in s.offloaded)

  def _drop_offload(self, session: Session) -> None:
    self._offloaded.pop(session.id, None)
    session.offloaded, session.offloaded_len = None, 0

  def _restore(self, session: Session) -> None:
    """Writes a host copy back into the session's new slot: those positions need no prefill."""
    if session.offloaded is None:
      return
    (k, v), n = session.offloaded, min(session.offloaded_len, len(session.history))
    self._drop_offload(session)
    self._cache = self._steps.write_slot(self._cache, session.slot, k, v)
    session.cached = n
    self.stats["restored_tokens"] += n

  def _prefill_some(self) -> Optional[tuple]:
    """One chunk of every prefilling request: one device call per chunk bucket, except the bucket returned
    as (width, group) to go with this iteration's decode step (None: nothing to fuse)."""
    by_bucket: dict[int, list] = {}
    for r in self._active:
      if r.state == "prefill":
        real = min(len(r.session.history) - r.session.cached, self.buckets[-1])
        bucket = next(b for b in self.buckets if b >= real)
        group = by_bucket.setdefault(bucket, [])
        if len(group) < self.max_prefill_rows:
          group.append((r, real))
    if not by_bucket:
      return None
    completing = lambda item: sum(r.session.cached + real == len(r.session.history) for r, real in item[1])  # noqa: E731
    fused = max(sorted(by_bucket.items()), key=completing)
    if not (completing(fused) or any(r.state == "decode" for r in self._active)):
      fused = None  # nothing would decode: a prefill-only call is cheaper
    for bucket, group in sorted(by_bucket.items()):
      if fused is None or bucket != fused[0]:
        self._prefill_call(bucket, group)
    return fused

  def _prefill_inputs(self, width: int, group: list) -> PrefillRows:
    """The prefill step's rows for `group` [(request, real tokens)], each padded to `width`."""
    rows = PrefillRows.zeros(self.max_prefill_rows, width)
    rows = rows._replace(num_rows=np.int32(len(group)))
    for i, (r, real) in enumerate(group):
      s = r.session
      rows.tokens[i, :real] = s.history[s.cached : s.cached + real]
      rows.slots[i], rows.starts[i], rows.lasts[i] = s.slot, s.cached, real - 1
      rows.sampling.set_row(i, r.params, r.key_data)
    return rows

  def _prefill_call(self, width: int, group: list) -> None:
    try:
      out_tokens, out_logprobs, self._cache = self._steps.prefill(
          self._params, self._cache, self._prefill_inputs(width, group)
      )
      out_tokens, out_logprobs = np.asarray(out_tokens), np.asarray(out_logprobs)
    except Exception as exc:  # noqa: BLE001 - the requests this call carried fail; others carry on
      for r, _ in group:
        self._fail(r, exc)
      if self._cache_deleted():  # every slot's K/V is gone
        raise
      return
    self._prefilled(group, out_tokens, out_logprobs)

  def _prefilled(self, group: list, out_tokens: np.ndarray, out_logprobs: np.ndarray) -> None:
    """Host bookkeeping after a prefill chunk; a request whose prompt is complete takes its first token."""
    self.stats["prefill_calls"] += 1
    for i, (r, real) in enumerate(group):
      s = r.session
      s.cached += real
      r.prefilled += real
      self.stats["prefill_chunks"] += 1
      self.stats["prefilled_tokens"] += real
      if s.cached == len(s.history):
        r.state = "decode"
        try:
          self._accept(r, int(out_tokens[i]), float(out_logprobs[i]))
        except Exception as exc:  # noqa: BLE001 - e.g. a failing detokenize callback
          self._fail(r, exc)

  # ------------------------------------------------------------------------------------------ decoding

  def _decode_inputs(self, decoding: list, after_prefill: dict) -> DecodeRows:
    """The decode step's rows. decoding: requests in state decode; after_prefill: slot -> (request,
    real) of the chunks prefilled in the same program (their K/V is written first)."""
    rows = DecodeRows.zeros(self.num_slots)
    for slot, owner in enumerate(self._slot_owner):
      if owner is not None:  # idle rows write K/V only past their valid prefix
        rows.lengths[slot] = owner.cached + (after_prefill[slot][1] if slot in after_prefill else 0)
    for r in decoding:
      i = r.session.slot
      rows.tokens[i], rows.active[i] = (r.session.history[-1] if r.tokens else 0), True
      rows.sampling.set_row(i, r.params, r.key_data, len(r.tokens))
    return rows

  def _decode_once(self) -> None:
    decoding = [r for r in self._active if r.state == "decode"]
    if not decoding:
      return
    out_tokens, out_logprobs, self._cache = self._steps.decode(
        self._decode_params, self._cache, self._decode_inputs(decoding, {})
    )
    self._decoded(decoding, np.asarray(out_tokens), np.asarray(out_logprobs))

  def _prefill_decode(self, width: int, group: list) -> None:
    """One bucket's prefill chunks and the decode step in one device call (`steps.prefill_decode`)."""
    decoding = [r for r in self._active if r.state == "decode"]
    completing = [
        (i, r)
        for i, (r, real) in enumerate(group)
        if r.session.cached + real == len(r.session.history)
    ]
    from_prefill = np.full(self.num_slots, -1, np.int32)
    for i, r in completing:
      from_prefill[r.session.slot] = i
    # Rows completing their prompt decode right after their first token, as if it had been accepted:
    # counter 1, position cached + real (the token itself comes from the prefill half, on the device).
    decode_inputs = self._decode_inputs(
        decoding + [r for _, r in completing], {r.session.slot: (r, real) for r, real in group}
    )
    for _, r in completing:
      decode_inputs.sampling.counters[r.session.slot] = 1
    try:
      p_tokens, p_logprobs, d_tokens, d_logprobs, self._cache = self._steps.prefill_decode(
          self._params,
          self._decode_params,
          self._cache,
          self._prefill_inputs(width, group),
          from_prefill,
          decode_inputs,
      )
      p_tokens, p_logprobs = np.asarray(p_tokens), np.asarray(p_logprobs)
      d_tokens, d_logprobs = np.asarray(d_tokens), np.asarray(d_logprobs)
    except Exception as exc:  # noqa: BLE001 - the loop fails the decoding requests and rebuilds the cache
      for r, _ in group:
        self._fail(r, exc)
      raise
    self.stats["fused_prefills"] += 1
    self._prefilled(group, p_tokens, p_logprobs)
    # A request its first token finished (stop, max_new_tokens 1, max_len) drops its decoded token.
    still = [r for _, r in completing if r.state == "decode" and r in self._active]
    self._decoded(decoding + still, d_tokens, d_logprobs)

  def _decoded(self, decoding: list, out_tokens: np.ndarray, out_logprobs: np.ndarray) -> None:
    if not decoding:
      return
    self.stats["decode_steps"] += 1
    self.stats["decoded_tokens"] += len(decoding)
    for r in decoding:
      try:
        r.session.cached += 1
        self._accept(r, int(out_tokens[r.session.slot]), float(out_logprobs[r.session.slot]))
      except Exception as exc:  # noqa: BLE001 - a failing callback fails only this request
        self._fail(r, exc)

  def _accept(self, req: _Request, token: int, logprob: float) -> None:
    """Records a sampled token and finishes the request when a limit or stop fires; a request whose
    caller cancelled its future (a client that went away) stops here, its turn undone."""
    if req.future.cancelled():
      self._fail(req, concurrent.futures.CancelledError(), count=False)
      return
    s, p = req.session, req.params
    s.history.append(token)
    req.tokens.append(token)
    req.logprobs.append(logprob)
    req.versions.append(self._version)
    matched = req.matcher.push(token)
    if token in p.stop_token_ids:
      self._finish(req, "stop", "stop_token")
    elif matched is not None:
      self._finish(req, "stop", "stop_string", matched)
    elif len(req.tokens) >= p.max_new_tokens:
      self._finish(req, "length", "max_new_tokens")
    elif len(s.history) >= self.max_len:
      self._finish(req, "length", "max_len")

  def _finish(
      self, req: _Request, reason: str, stop_reason: str, matched: Optional[str] = None
  ) -> None:
    self._retire(req)
    completion = Completion(
        tuple(req.tokens),
        tuple(req.logprobs),
        reason,
        min(req.versions),
        tuple(req.versions),
        stop_reason,
        matched,
        req.prefilled,
    )
    if not req.future.done():
      req.future.set_result(completion)

  def _retire(self, req: _Request) -> None:
    if req in self._active:
      self._active.remove(req)
    s = req.session
    s.busy, s.last_used = False, next(self._clock)
    if s.closed:
      self._release_slot(s)

  # ------------------------------------------------------------------------------------------ failures

  def _fail(self, req: _Request, exc: BaseException, count: bool = True) -> None:
    """Fails one request; its session drops the turn's tokens and re-prefills its history if reused."""
    if count:
      self.stats["request_failures"] += 1
    if req.state != "waiting":
      s = req.session
      del s.history[req.history_before :]
      s.cached = min(s.cached, len(s.history))
      self._retire(req)
    if not req.future.done():
      req.future.set_exception(exc)

  def _cache_deleted(self) -> bool:
    return self._cache is not None and any(x.is_deleted() for x in self._cache)

  def _recover(self, exc: BaseException) -> None:
    for req in [r for r in self._active if r.state == "decode"]:
      self._fail(req, RuntimeError(f"sampling engine step failed: {exc!r}"))
    if self._cache_deleted():
      self._cache = kv_cache.allocate_cache(self.config, self.num_slots, self.cache_len, self.rules)
      for owner in self._slot_owner:
        if owner is not None:
          owner.cached = 0  # prefill (possibly mid-request) restarts from the session's first token

  def _fail_all(self, exc: BaseException) -> None:
    for req in list(self._active) + list(self._waiting):
      if not req.future.done():
        req.future.set_exception(exc)
    self._active, self._waiting = [], []
