/**
 * llama2.c's run.c (fp32, greedy) on stories260K for the prompt "Once upon a time" (BOS + prompt,
 * 80 positions), as quoted in shared/models/README.md: an oracle independent of this code.
 */
export const STORIES_PROMPT = 'Once upon a time';
export const STORIES_REFERENCE =
  'Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball. She wanted to play with it, but it was too high.\nLily\'s mom said, "Lily, let\'s go to';

/** `text` continues the prompt as llama2.c does (a prefix of its continuation). */
export const continuesReference = (text: string): boolean => STORIES_REFERENCE.startsWith(STORIES_PROMPT + text);
