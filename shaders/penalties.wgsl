// Logit processors of a sampling step, applied in place to [rows, cols] f32 logits before the
// sampling kernel, in vLLM's order: logit bias and the min-tokens mask, then the penalties; then
// `sample` applies temperature, min-p, top-k and top-p.
//
//   bias          sparse additions: logits[row, token] += bias for each (row, token, bias) entry
//                 (tokens unique per row). A bias of exactly -inf (its bits) is written instead
//                 of added, so a mask does not rely on the GPU's infinity arithmetic.
//   penalize      per element of a row with a count slot, where the token occurred (count != 0):
//                   repetition (prompt or output): l > 0 ? l / r : l * r
//                   frequency and presence (output only): l -= f * n, then l -= p * (n > 0)
//                 Rows without a slot, tokens never seen and non-finite logits are not written.
//   counts_init   one workgroup per sequence: zero its count row, then count its tokens (the
//                 first `prompt` of them set the prompt bit, the rest add to the output count).
//   count_tokens  after sampling: the sampled token of each counting row adds one to its count.
//
// Counts are dense, [slots, cols] u32 per penalised running sequence: bit 31 = "in the prompt",
// bits 0..30 = occurrences in the output. Memory is 4 bytes per vocabulary entry per such sequence
// (608 KiB at a 152k vocabulary, 38 MiB for 64 of them: small next to their KV cache), and in
// exchange the step's update is one atomic add and the penalty pass one coalesced u32 read per
// logit, with no search. A sparse form (a sorted (token, count) list per sequence) would take
// O(distinct tokens) memory but need a search or a merge per update, and the penalty pass a
// scatter per listed token. Each entry point declares its own bindings (dense from @binding(1)
// in the order the TypeScript passes them); entry points never share a resource variable, so
// binding numbers repeat across them.

override WG: u32 = 256;

const NONE: u32 = 0xffffffffu;
const PROMPT_BIT: u32 = 0x80000000u;
const NEG_INF_BITS: u32 = 0xff800000u;

struct Params {
  rows: u32,  // logit rows (penalize, count_tokens), entries (bias), jobs (counts_init)
  cols: u32,
}

struct BiasEntry {
  row: u32,
  token: u32,
  bias: f32,
}

struct PenaltyRow {
  slot: u32,  // count row of the sequence; NONE: no penalties
  presence: f32,
  frequency: f32,
  repetition: f32,
}

struct InitJob {
  slot: u32,
  offset: u32,  // first token in `init_tokens`
  prompt: u32,  // tokens that are prompt
  total: u32,   // prompt and output tokens
}

@group(0) @binding(0) var<uniform> p: Params;

// bias
@group(0) @binding(1) var<storage, read_write> bias_logits: array<f32>;
@group(0) @binding(2) var<storage, read> bias_entries: array<BiasEntry>;

// penalize
@group(0) @binding(1) var<storage, read_write> pen_logits: array<f32>;
@group(0) @binding(2) var<storage, read> pen_rows: array<PenaltyRow>;
@group(0) @binding(3) var<storage, read> pen_counts: array<u32>;

// counts_init, count_tokens
@group(0) @binding(1) var<storage, read_write> counts: array<atomic<u32>>;
@group(0) @binding(2) var<storage, read> init_jobs: array<InitJob>;
@group(0) @binding(3) var<storage, read> init_tokens: array<u32>;
@group(0) @binding(2) var<storage, read> row_slots: array<u32>;
@group(0) @binding(3) var<storage, read> sampled: array<u32>;

@compute @workgroup_size(WG)
fn bias(@builtin(global_invocation_id) gid: vec3u) {
  let e = gid.x;
  if (e >= p.rows) { return; }
  let b = bias_entries[e];
  if (b.token >= p.cols) { return; }
  let i = b.row * p.cols + b.token;
  if (bitcast<u32>(b.bias) == NEG_INF_BITS) {
    bias_logits[i] = b.bias;  // the mask itself (a constant -inf is not valid WGSL)
  } else {
    bias_logits[i] = bias_logits[i] + b.bias;
  }
}

// Grid: x over columns (WG per workgroup), y over rows.
@compute @workgroup_size(WG)
fn penalize(@builtin(global_invocation_id) gid: vec3u) {
  let row = gid.y;
  let j = gid.x;
  if (row >= p.rows || j >= p.cols) { return; }
  let r = pen_rows[row];
  if (r.slot == NONE) { return; }
  let c = pen_counts[r.slot * p.cols + j];
  if (c == 0u) { return; }
  let i = row * p.cols + j;
  var l = pen_logits[i];
  // masked (-inf) and other non-finite logits stay as they are (tested on the bits)
  if ((bitcast<u32>(l) & 0x7f800000u) == 0x7f800000u) { return; }
  if (r.repetition != 1.0) { l = select(l * r.repetition, l / r.repetition, l > 0.0); }
  let n = c & ~PROMPT_BIT;
  if (n > 0u) {
    l -= r.frequency * f32(n);
    l -= r.presence;
  }
  pen_logits[i] = l;
}

@compute @workgroup_size(WG)
fn counts_init(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) lid: u32) {
  if (wg.x >= p.rows) { return; }
  let job = init_jobs[wg.x];
  let base = job.slot * p.cols;
  for (var j = lid; j < p.cols; j += WG) { atomicStore(&counts[base + j], 0u); }
  storageBarrier();
  for (var t = lid; t < job.total; t += WG) {
    let token = init_tokens[job.offset + t];
    if (token < p.cols) {
      if (t < job.prompt) {
        atomicOr(&counts[base + token], PROMPT_BIT);
      } else {
        atomicAdd(&counts[base + token], 1u);
      }
    }
  }
}

@compute @workgroup_size(WG)
fn count_tokens(@builtin(global_invocation_id) gid: vec3u) {
  let row = gid.x;
  if (row >= p.rows) { return; }
  let slot = row_slots[row];
  let token = sampled[row];
  if (slot == NONE || token >= p.cols) { return; }
  atomicAdd(&counts[slot * p.cols + token], 1u);
}
