// Constrained decoding inside the step (issue 12): a token automaton in CSR form
// (src/constraints/automaton.ts) masks each constrained row's logits before sampling, and after
// sampling moves each sequence to its next state. The state of every constrained sequence lives in
// `states` (a u32 per slot) and never leaves the GPU; the only thing read back is one status word
// per row, with the sampled ids.
//
// The automaton buffer is one u32 array: indptr [n + 1], then pairs [2 x edges] (token, next state;
// tokens ascending in a row), then accepting [n] (0 or 1). Rows of one dispatch share an automaton.
//
//   mask     one thread per (constrained row, vocabulary entry), a 2-D grid as elementwise
//            kernels use (a batch of one row still spreads over the whole device): keep the logit
//            when its token has an edge from the row's state (binary search in the state's
//            sorted edges, log2(fan-out) reads of a row every thread of the workgroup shares), or
//            is EOS in an accepting state; otherwise write -inf. No scratch, no barriers.
//   advance  one thread per constrained row whose sampled token is kept: next = the edge of the
//            sampled token (binary search in the row); status = 1 when the next state has no
//            edges (the output is complete), 2 when the token has no edge (EOS, or a token the
//            mask did not allow), else 0. The state is unchanged unless an edge is taken.

override WG: u32 = 256;

const NEG_INF_BITS: u32 = 0xff800000u;
const NONE: u32 = 0xffffffffu;

struct Params {
  rows: u32,    // constrained rows in this dispatch
  cols: u32,    // vocabulary
  states: u32,  // automaton states
  edges: u32,   // automaton edges
  eos: u32,     // the end-of-sequence token (NONE: the model has none)
}

struct Row {
  logit_row: u32,  // row of `logits` / `sampled` / `status`
  slot: u32,       // the sequence's state slot
  keep: u32,       // advance: 1 when the sampled token is kept (the row completes its context)
}

@group(0) @binding(0) var<uniform> p: Params;
// the automaton, shared by mask and advance (both read it at binding 2)
@group(0) @binding(2) var<storage, read> automaton: array<u32>;

// The state `token` leads to from `state`, NONE when it has no edge there (binary search in the
// state's sorted edges: log2(fan-out) reads of a row the threads of a workgroup share).
fn edge_to(state: u32, token: u32) -> u32 {
  let pairs = p.states + 1u;
  var lo = automaton[state];
  var hi = automaton[state + 1u];
  loop {
    if (lo >= hi) {
      return NONE;
    }
    let mid = (lo + hi) / 2u;
    let t = automaton[pairs + 2u * mid];
    if (t == token) {
      return automaton[pairs + 2u * mid + 1u];
    }
    if (t < token) {
      lo = mid + 1u;
    } else {
      hi = mid;
    }
  }
}

fn accepting(state: u32) -> bool {
  return automaton[p.states + 1u + 2u * p.edges + state] != 0u;
}

// mask
@group(0) @binding(1) var<storage, read_write> mask_logits: array<u32>;
@group(0) @binding(3) var<storage, read> mask_states: array<u32>;
@group(0) @binding(4) var<storage, read> mask_rows: array<Row>;

@compute @workgroup_size(WG)
fn mask(@builtin(global_invocation_id) gid: vec3<u32>) {
  let c = gid.x;
  if (c >= p.cols) {
    return;
  }
  let r = mask_rows[gid.y];
  let state = mask_states[r.slot];
  let keep = (c == p.eos && accepting(state)) || edge_to(state, c) != NONE;
  if (!keep) {
    mask_logits[r.logit_row * p.cols + c] = NEG_INF_BITS;
  }
}

// advance
@group(0) @binding(1) var<storage, read_write> adv_states: array<u32>;
@group(0) @binding(3) var<storage, read> adv_rows: array<Row>;
@group(0) @binding(4) var<storage, read> adv_sampled: array<u32>;
@group(0) @binding(5) var<storage, read_write> adv_status: array<u32>;

@compute @workgroup_size(64)
fn advance(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.x;
  if (i >= p.rows) {
    return;
  }
  let r = adv_rows[i];
  if (r.keep == 0u) {
    return;
  }
  let next = edge_to(adv_states[r.slot], adv_sampled[r.logit_row]);
  if (next == NONE) {
    adv_status[r.logit_row] = 2u;
    return;
  }
  adv_states[r.slot] = next;
  adv_status[r.logit_row] = select(0u, 1u, automaton[next] == automaton[next + 1u]);
}

// set_state: (slot, state) pairs written before the step's mask: a sequence that starts, or
// resumes at a state the CPU worked out (after preemption or a hand-over).
@group(0) @binding(1) var<storage, read_write> set_states: array<u32>;
@group(0) @binding(2) var<storage, read> set_pairs: array<vec2<u32>>;

@compute @workgroup_size(64)
fn set_state(@builtin(global_invocation_id) gid: vec3<u32>) {
  if (gid.x < p.rows) {
    let q = set_pairs[gid.x];
    set_states[q.x] = q.y;
  }
}
