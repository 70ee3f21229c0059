/** The work of one forward pass, as a step-time model sees it. */
export interface BatchShape {
  /** prompt tokens fed this step (all prompt chunks) */
  prefillTokens: number;
  /** sum over prompt chunks of chunk length x (context before the chunk + chunk length): attention work */
  prefillAttention: number;
  /** sequences decoding one token this step */
  decodeSeqs: number;
  /** context tokens the decoding sequences read (sum of their KV lengths) */
  decodeContext: number;
}

/**
 * Step time of one forward pass from the shape of its batch. The engine's scheduler (policy
 * decisions) and the simulator (its clock) both use it; implementations are fitted from measured
 * steps or derived from a hardware preset and a model shape.
 */
export interface CostModel {
  stepSeconds(b: BatchShape): number;
  /** seconds to ship the KV cache of `tokens` tokens between instances (disaggregated serving) */
  kvTransferSeconds(tokens: number): number;
  /** KV cache capacity of one instance, in tokens */
  kvCapacityTokens: number;
  /** one line for reports */
  describe(): string;
}
