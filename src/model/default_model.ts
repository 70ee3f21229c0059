import { join } from 'node:path';
import { repoRoot } from '../gpu/paths.ts';

/** The model shipped in the repository (stories260K, GGUF F32), used when --model is not given. */
export const DEFAULT_MODEL = join(repoRoot, 'models', 'stories260K', 'stories260K.gguf');
