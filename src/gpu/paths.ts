import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** Repository root (where shaders/ and .cache/ live), found from this module's location. */
export const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const shaderDir = join(repoRoot, 'shaders');
export const swiftshaderIcd = join(repoRoot, '.cache', 'swiftshader', 'vk_swiftshader_icd.json');
