"""Per-lane permutation address generators of the permuted-feature FC path (method C)."""

import functools

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from slimnfu.contract import PERM_FIELDS, bits_for, perm_addr_bits, perm_param_width
from slimnfu.rtl._params import check_config

__all__ = ["PermAddrGen"]


class _Val:
    """A value of the generator's pipeline: its signal (None in a dry run) and the stage (cycles
    after the step) in which it holds the step's value; stage None: constant while a layer runs."""

    def __init__(self, sig, stage):
        self.sig, self.stage = sig, stage


class _Pipe:
    """Pipelined arithmetic, one operation a stage: every result is a register, and the operands
    of an operation are delayed (registers, shared) to the later one's stage. With ``m=None``
    only the stages are computed (:meth:`PermAddrGen.latency`)."""

    def __init__(self, m, width):
        self.m, self.width, self.delays, self.count = m, width, {}, 0

    def at(self, v, stage):
        """``v`` in ``stage`` (``>= v.stage``)."""
        if v.stage is None or v.stage == stage:
            return v
        assert stage > v.stage
        if self.m is None:
            return _Val(None, stage)
        key = (id(v.sig), stage)
        if key not in self.delays:
            prev = self.at(v, stage - 1)
            reg = Signal.like(prev.sig, name=f"{prev.sig.name}_s{stage}")
            self.m.d.sync += reg.eq(prev.sig)
            self.delays[key] = _Val(reg, stage)
        return self.delays[key]

    def op(self, fn, *vals, name="t", shape=None):
        """``fn(*signals)`` registered (``shape``: the register's, default ``width`` bits
        unsigned): a value one stage after its latest operand."""
        stage = max((v.stage for v in vals if v.stage is not None), default=0)
        ins = [self.at(v, stage) for v in vals]
        if self.m is None:
            return _Val(None, stage + 1)
        self.count += 1
        out = Signal(self.width if shape is None else shape, name=f"{name}_{self.count}")
        self.m.d.sync += out.eq(fn(*(v.sig for v in ins)))
        return _Val(out, stage + 1)


class PermAddrGen(wiring.Component):
    """Produce the ``tn*ti`` addresses into ``s`` of one FC step, pipelined: the addresses of
    the step given in cycle ``T`` (``first``, ``step``, the output tile's ``params``) are in
    ``addr`` (each lane a register of the pipeline) in cycle ``T + latency(cfg)``.

    Lane ``l = j*ti + i`` (output lane ``j``, input lane ``i``) of the step ``(o, t)`` needs
    the address of ``W[r, c]``, ``c = t*ti + i``, for row ``r = o*tn + j``.

    * ``affine`` (generated permutations, :mod:`slimnfu.formats.perm`): row ``r``
      reads ``s[g_r*n + pi_r(c)]`` with ``pi_r(c) = (b_r + a_r*c + e_r*c*(c-1)/2) mod n``;
      the row's parameters (:data:`slimnfu.contract.PERM_FIELDS`) are ``a_r``, ``e_r``,
      ``start = g_r*n + b_r`` and ``last = g_r*n + n - 1`` (absolute addresses, so no adder
      for the group base). Per output lane, three registers walk the steps with one wrapping
      add each (the loop, the only feedback): ``x`` (lane 0's address), ``d`` (its first
      difference) and ``q`` (``x``'s step, ``pi(c + ti) - pi(c)``): ``x += q``, ``d += ti*e``,
      ``q += ti*ti*e``; ``x``'s increment is a fourth register, loaded one step ahead with
      the next step's ``q``, so only registers and first-step muxes feed the adds. ``d``'s and
      ``q``'s wrapping adds are two adds side by side (``r + v`` and ``r + (v - n)``, the
      second's sign selects; ``v - n`` formed ahead of the loop), one carry chain deep. Their
      start values and increments (``q0 = ti*a + ti*(ti-1)/2*e``,
      ``ti*e``, ``ti*ti*e``) are constant multiples of the parameters, formed ahead of the loop
      from the parameters by wrapping doublings and adds (no multiplier). After the loop the
      ``ti`` lane addresses come from chains of ``span`` lanes (:meth:`lane_span` picks it):

      - a *chain* of wrapping adds, ``x_{k+1} = x_k + d_k``, ``d_{k+1} = d_k + e``, takes a
        stage and two adds a lane;
      - a chain starts at lane 0 or at a *head* lane ``k`` (a multiple of ``span``), whose
        distance from lane 0, ``o_k = pi(c + k) - pi(c) = k*a + e*(k*c + k*(k-1)/2)``, is a
        loop register of its own (start ``k*a + k*(k-1)/2*e``, step ``k*ti*e``, formed ahead
        of the loop): ``x_k = x + o_k`` and ``d_k = d + k*e`` are one stage.

      ``span = ti`` is one chain (``ti - 1`` stages), ``span = 1`` all heads (one stage, three
      adds and a register a lane). Every add is a pipeline register.
    * ``affine`` with ``hw > 1`` (``PassDesc.flatten``: the inputs are a conv output
      of ``hw`` pixels a channel in the neuron buffer's order, affine rows): input lane ``i``
      of step ``u = t*hw + p`` (channel tile ``t``, pixel ``p``) is flatten index ``(t*ti +
      i)*hw + p``, so its address is ``x_u + i*(a_r*hw mod n)`` with ``x_u = pi_r(t*ti*hw +
      p)``. The parameters hold the lane stride ``a_r*hw mod n`` in field ``a`` (the chain's
      difference, no second difference) and ``a_r`` in field ``e``; a pixel counter (reset by
      ``first``) and a flag kept one step ahead of it (so no compare is in front of the
      loop's add) mark the last pixel of a channel tile, and ``x`` moves by ``a_r`` within a
      tile and by ``(ti-1)*(a_r*hw) + a_r`` at a tile's end.
    * ``affine`` low (any other pass): the addresses are of no use (the engine reads SB at the
      sequencer's address then).

    ``a_r, e_r < n`` and ``start <= last < perm_depth`` with ``last - start < n`` are required
    (the compression export guarantees it); with them every address is in
    ``[last - n + 1, last]``.

    Parameters
    ----------
    cfg : AccelConfig
        Must have ``perm=True``; the addresses span ``cfg.perm.depth``.
    lead : int
        The cycles by which the engine gives the generator a pass's steps ahead of when it needs
        their addresses (``>= 0``): the longest lane chains whose latency is within it
        (:meth:`lane_span`).

    Members
    -------
    affine : In(1); n : In(bits_for(perm_depth))
        The pass is ``perm_affine`` (``desc.perm``), and its sequence length (``desc.n_in``);
        constant while a layer runs.
    hw : In(bits_for(nbin_depth))
        Pixels of a channel tile (``desc.perm_hw``; 1: the inputs in flatten order); from
        the cycle before a layer's first step on (it is registered).
    params : In(perm_param_width)
        The output tile's per-lane ``(a, e, start, last)``, for the step on the inputs.
    first, step : In(1)
        The step is the first of its output tile / a step is issued.
    addr : Out(tn*ti*ab)
        Lane ``l``'s address at bits ``l*ab``, from a register.
    """

    def __init__(self, cfg, lead):
        self.cfg = check_config(self, cfg, needs="perm")
        if not isinstance(lead, int) or lead < 0:
            self._MustUse__silence = True
            raise ValueError(f"PermAddrGen: lead must be an int >= 0, not {lead!r}")
        self.lead = lead
        self.ab = perm_addr_bits(cfg)
        super().__init__({
            "affine": In(1),
            "n": In(bits_for(cfg.perm.depth)),
            "hw": In(bits_for(cfg.nbin_depth)),
            "params": In(perm_param_width(cfg)),
            "first": In(1),
            "step": In(1),
            "addr": Out(cfg.tn * cfg.ti * self.ab),
        })

    @classmethod
    def lane_span(cls, cfg, lead):
        """The lanes per chain of the generator of ``cfg`` given ``lead`` cycles: the longest
        (the fewest head lanes, so the fewest adds and registers) whose latency is within
        ``lead``; if none is, the longest of those with the lowest latency."""
        latency = _span_latencies(cfg)
        fits = [span for span, cycles in latency.items() if cycles <= lead]
        return max(fits) if fits else min(latency, key=lambda span: (latency[span], -span))

    @classmethod
    def latency(cls, cfg, lead):
        """Cycles from a step on the inputs to its addresses in ``addr``: the stages of the
        pipeline :meth:`elaborate` builds (the same construction, without hardware)."""
        return _span_latencies(cfg)[cls.lane_span(cfg, lead)]

    def elaborate(self, platform):
        m = Module()
        self._build(m, self.cfg, self, self.lane_span(self.cfg, self.lead))
        return m

    @staticmethod
    def _build(m, cfg, ports, span):
        """Build the generator into ``m`` (ports ``ports``; lane chains of ``span`` lanes), or
        with ``m=None`` only count its stages; returns the latency."""
        tn, ti = cfg.tn, cfg.ti
        ab = perm_addr_bits(cfg)
        nf = len(PERM_FIELDS)
        dry = m is None
        pipe = _Pipe(m, ab)
        assert 1 <= span <= ti
        heads = list(range(0, ti, span))     # the lanes that start a chain
        chained = span > 1                   # the chains need d, the first difference
        quad = cfg.perm.quadratic            # second differences: d and q move

        def sig(value):
            return None if dry else value

        # The layer's constants, registered (they hold while a layer runs, and a step reaches
        # the stages that use them ``>= 2`` cycles after it is issued): ``n``, the mode's
        # selects, and from ``hw`` the flag ``flat`` and ``hw_m2 = hw - 2``, for the tile-end flag's
        # ``p + 2 >= hw`` (a re-laid pass has ``hw >= 2``; the flag is not used otherwise).
        flat = None if dry else Signal(name="flat")
        n = None if dry else Signal.like(ports.n, name="n_r")
        if not dry:
            hw_m2 = Signal.like(ports.hw, name="hw_m2")
            m.d.sync += [flat.eq(ports.hw > 1), hw_m2.eq(ports.hw - 2), n.eq(ports.n)]

        def reduce(total):
            """``total mod n`` of ``total`` in ``[0, 2n)``: one subtraction, whose sign selects
            (no separate compare: one carry chain and a 2:1 select a bit)."""
            over = total - n
            return Mux(over[-1], total, over)

        def wrap(a, b):
            """``(a + b) mod n`` of values in ``[0, n)``."""
            return pipe.op(lambda x, y: reduce(x + y), a, b, name="wadd")

        def minus_n(v):
            """``v - n``, signed: with it a loop add ``(r + v) mod n`` is two adds side by side
            (:func:`add_mod`)."""
            return pipe.op(lambda x: x - n, v, name="mn", shape=signed(ab + 2))

        def add_mod(r, v, v_mn):
            """``(r + v) mod n`` of values in ``[0, n)``, given ``v_mn = v - n``: ``r + v_mn``
            and ``r + v`` side by side, the first's sign selects (one carry chain deep where
            :func:`reduce` of the sum is two)."""
            over = r + v_mn
            return Mux(over[-1], r + v, over)

        def wrap_sub(a, b):
            """``(a - b) mod n`` of values in ``[0, n)``."""
            return pipe.op(lambda x, y: Mux(x >= y, x - y, x + n - y), a, b, name="wsub")

        def reduce_abs(total, top):
            """An absolute address plus a difference, ``total``, back into ``[top - n + 1,
            top]``: the sign of ``top - total`` selects (a subtraction, no compare)."""
            return Mux((top - total)[-1], total - n, total)

        def wrap_abs(x, d, last):
            """An absolute address plus a difference, back into ``[last - n + 1, last]``."""
            return pipe.op(lambda a, b, top: reduce_abs(a + b, top), x, d, last, name="addr")

        def const_mul(v, k, powers):
            """``k*v mod n`` by wrapping doublings (shared through ``powers``) and adds."""
            if k == 0:
                return _Val(sig(Const(0, ab)), None)
            while len(powers) < k.bit_length():
                powers.append(wrap(powers[-1], powers[-1]))
            terms = [powers[p] for p in range(k.bit_length()) if k >> p & 1]
            while len(terms) > 1:
                terms = [wrap(terms[i], terms[i + 1]) if i + 1 < len(terms) else terms[i]
                         for i in range(0, len(terms), 2)]
            return terms[0]

        # Ahead of the loop, per output lane: the constant multiples of the parameters.
        lanes = []
        for j in range(tn):
            field = {}
            for k, name in enumerate(PERM_FIELDS):
                field[name] = _Val(sig(None if dry else Signal(ab, name=f"{name}{j}")), 0)
                if not dry:
                    m.d.comb += field[name].sig.eq(ports.params[(nf * j + k) * ab:
                                                                (nf * j + k + 1) * ab])
            a_pows = [field["a"]]
            lane = dict(field)
            lane["am"] = const_mul(field["a"], ti, a_pows)              # ti*a
            lane["q0"] = lane["am"]
            if quad:
                second = _Val(sig(None if dry else Signal(ab, name=f"second{j}")), 0)
                if not dry:
                    m.d.comb += second.sig.eq(Mux(flat, 0, field["e"].sig))
                e_pows = [second]
                lane["second"] = second
                if chained:
                    lane["te"] = const_mul(second, ti, e_pows)          # ti*e: the chain's d
                lane["tte"] = const_mul(second, ti * ti, e_pows)        # ti*ti*e
                if chained:
                    lane["te_mn"] = minus_n(lane["te"])
                lane["tte_mn"] = minus_n(lane["tte"])
                tri = const_mul(second, ti * (ti - 1) // 2, e_pows)     # ti*(ti-1)/2*e
                if tri.stage is not None:
                    lane["q0"] = wrap(lane["am"], tri)
            # a re-laid pass: a tile's end moves x by (ti-1)*a + e (e holds the pixel step)
            lane["jump"] = wrap(wrap_sub(lane["am"], field["a"]), field["e"])
            for k in heads[1:]:
                # head lane k's offset: its start k*a + k*(k-1)/2*e and its step k*ti*e (a
                # re-laid pass, or affine rows only: k*a, the lane stride's multiple, and no
                # step); its chain's first difference (when it has more than the head) is
                # d + k*e
                ka = const_mul(field["a"], k, a_pows)
                lane[f"o{k}"] = ka
                if not quad:
                    continue
                tri_k = const_mul(second, k * (k - 1) // 2, e_pows)
                if tri_k.stage is not None:
                    lane[f"o{k}"] = wrap(ka, tri_k)
                lane[f"os{k}"] = const_mul(second, k * ti, e_pows)
                lane[f"os_mn{k}"] = minus_n(lane[f"os{k}"])
                if k + 1 < ti and chained:
                    lane[f"de{k}"] = const_mul(second, k, e_pows)
            lanes.append(lane)
        # The loop runs in stage ``loop``; the start values it loads (``start``, ``a``, ``q0``,
        # ``e``, the heads' offsets) are needed a stage earlier: a step's registers are loaded
        # while the step is one stage ahead of the loop, so that only registers feed the loop's
        # adds.
        loaded = ("start", "a", "q0", "e") + tuple(f"o{k}" for k in heads[1:])
        loop = max(max(v.stage + (k in loaded) for k, v in lane.items() if v.stage is not None)
                   for lane in lanes)
        assert loop >= 2

        # The step's flags, registers: ``load`` (the step at ``loop - 1`` is the first of its
        # output tile: load the start values) and ``adv`` (the step at ``loop`` is an affine
        # step: advance).
        if not dry:
            issued_first, issued_affine = Signal(name="issued_first"), Signal(name="issued_aff")
            m.d.comb += [issued_first.eq(ports.first & ports.step),
                         issued_affine.eq(ports.step & ports.affine)]
            load = pipe.at(_Val(issued_first, 0), loop - 1).sig
            adv = pipe.at(_Val(issued_affine, 0), loop).sig

        if not dry:
            # The pixel counter, with the flag "this step ends its channel tile" kept one step
            # ahead in a register (``end_reg``): both loaded with the start values (p = 0; the
            # first of an output tile ends its tile iff ``hw <= 1``), so no compare and no
            # select is in front of the loop's adds; a step ends its tile iff ``p + 1 >= hw``.
            p = Signal.like(ports.hw, name="pixel_reg")
            tile_end = Signal(name="tile_end_reg")
            end_next = Signal(name="tile_end_next")
            m.d.comb += end_next.eq(Mux(tile_end, ~flat, p >= hw_m2))
            with m.If(load):
                m.d.sync += [p.eq(0), tile_end.eq(~flat)]
            with m.Elif(adv):
                m.d.sync += [p.eq(Mux(tile_end, 0, p + 1)), tile_end.eq(end_next)]
        addrs = []
        # the last lane address: a chain's lanes a stage each after its head (lane 0 in the
        # loop's stage, the others a stage later)
        final = max(loop + (k > 0) + min(span, ti - k) - 1 for k in heads)
        for j, lane in enumerate(lanes):
            v = {k: pipe.at(x, loop - (k in loaded)) for k, x in lane.items()}
            if dry:
                x0 = _Val(None, loop)
                d0 = (_Val(None, loop) if chained else None) if quad else v["a"]
            else:
                # The loop's registers: x and its increment, registered one step ahead too
                # (the next step's ``q``, or in a re-laid pass ``jump`` or ``e`` by the next
                # step's tile-end flag); with quadratic rows also the chains' difference ``d``
                # and x's step ``q``, which move. Affine rows only: ``d`` is ``a`` and ``q`` is
                # ``q0``, constants of the tile carried with the step.
                x = Signal(ab, name=f"x_reg{j}")
                start, step = [], []
                d0, q_next = v["a"], v["q0"].sig
                if quad:
                    d0 = None
                    if chained:
                        d = Signal(ab, name=f"d_reg{j}")
                        start.append(d.eq(v["a"].sig))
                        step.append(d.eq(add_mod(d, v["te"].sig, v["te_mn"].sig)))
                        d0 = _Val(d, loop)
                    q = Signal(ab, name=f"q_reg{j}")
                    q_next = add_mod(q, v["tte"].sig, v["tte_mn"].sig)
                    start.append(q.eq(v["q0"].sig))
                    step.append(q.eq(q_next))
                inc = Signal(ab, name=f"inc_reg{j}")
                with m.If(load):
                    m.d.sync += [x.eq(v["start"].sig), *start,
                                 inc.eq(Mux(flat, v["e"].sig, v["q0"].sig))]
                with m.Elif(adv):
                    m.d.sync += [x.eq(reduce_abs(x + inc, v["last"].sig)), *step,
                                 inc.eq(Mux(flat, Mux(end_next, v["jump"].sig, v["e"].sig),
                                            q_next))]
                x0 = _Val(x, loop)
            # After the loop: a chain of lanes from lane 0 and from each head lane.
            xs = []
            for head in heads:
                if head == 0:
                    x, d = x0, d0
                else:
                    if not quad:
                        o = v[f"o{head}"]
                    elif dry:
                        o = _Val(None, loop)
                    else:
                        o = _Val(Signal(ab, name=f"o{head}_reg{j}"), loop)
                        with m.If(load):
                            m.d.sync += o.sig.eq(v[f"o{head}"].sig)
                        with m.Elif(adv):
                            m.d.sync += o.sig.eq(add_mod(o.sig, v[f"os{head}"].sig,
                                                         v[f"os_mn{head}"].sig))
                    x = wrap_abs(x0, o, v["last"])
                    d = wrap(d0, v[f"de{head}"]) if f"de{head}" in v else (None if quad else d0)
                xs.append(x)
                end = min(head + span, ti)
                for k in range(head + 1, end):
                    xs.append(wrap_abs(xs[-1], d, v["last"]))
                    if k < end - 1 and quad:
                        d = wrap(d, v["second"])
            addrs.extend(pipe.at(x, final) for x in xs)
        # The lane addresses, every one a pipeline register (any value outside an affine pass:
        # the engine then takes SB's).
        if not dry:
            m.d.comb += ports.addr.eq(Cat(*(x.sig for x in addrs)))
        return final


@functools.cache
def _span_latencies(cfg):
    """``PermAddrGen``'s latency on ``cfg`` for every lane span, ``ti`` down to 1: dry builds,
    done once per config (the engine's latency asks for them on every affine pass)."""
    return {span: PermAddrGen._build(None, cfg, None, span) for span in range(cfg.ti, 0, -1)}
