import type { CaseFactory } from '../case.ts';
import { cases as ann } from './ann.ts';
import { cases as attention } from './attention.ts';
import { cases as copy } from './copy.ts';
import { cases as dequant } from './dequant.ts';
import { cases as elementwise } from './elementwise.ts';
import { cases as embedding } from './embedding.ts';
import { cases as kv_cache } from './kv_cache.ts';
import { cases as matmul } from './matmul.ts';
import { cases as penalties } from './penalties.ts';
import { cases as rmsnorm } from './rmsnorm.ts';
import { cases as rope } from './rope.ts';
import { cases as sampling } from './sampling.ts';
import { cases as softmax } from './softmax.ts';

/** Every kernel family's benchmark cases (a new family adds its module here). */
export const CASE_FACTORIES: Record<string, CaseFactory> = { ann, attention, copy, dequant, elementwise, embedding, kv_cache, matmul, penalties, rmsnorm, rope, sampling, softmax };
