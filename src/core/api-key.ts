// ACM2's API key format (5107384): 'acm2_' + secrets.token_urlsafe(32)[:32], stored as a
// bcrypt hash that Python's bcrypt.checkpw accepts, with the first 12 characters as prefix.

import { randomBytes } from 'node:crypto';
import bcrypt from 'bcryptjs';

export const API_KEY_RE = /^acm2_[A-Za-z0-9_-]{32}$/;
/** Python's bcrypt.gensalt() default. */
export const BCRYPT_ROUNDS = 12;

/** The cost factor: ACM2_BCRYPT_ROUNDS when it is a whole number from 4 to 15 (tests, benchmarks), else the default. */
export function bcryptRounds(): number {
  const r = Number(process.env.ACM2_BCRYPT_ROUNDS ?? BCRYPT_ROUNDS);
  return Number.isInteger(r) && r >= 4 && r <= 15 ? r : BCRYPT_ROUNDS;
}

export interface NewApiKey {
  key: string;
  hash: string;
  prefix: string;
}

export function generateApiKey(rounds = BCRYPT_ROUNDS): NewApiKey {
  const key = `acm2_${randomBytes(32).toString('base64url').slice(0, 32)}`;
  // bcryptjs writes $2b$ hashes, the variant Python's bcrypt produces and checks.
  const hash = bcrypt.hashSync(key, bcrypt.genSaltSync(rounds));
  return { key, hash, prefix: key.slice(0, 12) };
}

export function checkApiKey(key: string, hash: string): boolean {
  return API_KEY_RE.test(key) && bcrypt.compareSync(key, hash);
}
