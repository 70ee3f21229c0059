import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * Repository root (where shaders/, models/ and .cache/ live), found from this module's location,
 * or WGSERVE_ROOT for a bundled build (scripts/device-bundle.sh) whose modules live elsewhere.
 */
export const repoRoot = process.env.WGSERVE_ROOT ?? join(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const shaderDir = join(repoRoot, 'shaders');
export const swiftshaderIcd = join(repoRoot, '.cache', 'swiftshader', 'vk_swiftshader_icd.json');
