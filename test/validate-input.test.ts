// The accepting side of user create's input checks (bad-input.test.ts has the refusals, end to end).
import { describe, expect, it } from 'vitest';
import { parseWordpressId, validateEmail } from '../src/core/users.js';

describe('validateEmail', () => {
  it('takes the addresses mail can reach, trimmed', () => {
    for (const e of ["o'brien.x+tag@example.com", 'a.b.c@sub.example.co.uk', `${'a'.repeat(64)}@example.com`, 'x_y-z@a-b.example']) {
      expect(validateEmail(e)).toBe(e);
    }
    expect(validateEmail('  ada@example.com ')).toBe('ada@example.com');
    // 254 characters in all is the most RFC 5321 allows, and is taken.
    const at254 = `a@${['b', 'c', 'd'].map((c) => c.repeat(63)).join('.')}.${'e'.repeat(56)}.com`;
    expect(at254).toHaveLength(254);
    expect(validateEmail(at254)).toBe(at254);
  });
  it('refuses what a regex alone let through, naming why', () => {
    expect(() => validateEmail('.a@example.com')).toThrow(/may not begin or end with '\.'/);
    expect(() => validateEmail('a..b@example.com')).toThrow(/nor hold '\.\.'/);
    expect(() => validateEmail(`${'a'.repeat(65)}@example.com`)).toThrow(/65 characters: at most 64/);
    expect(() => validateEmail(`a@${['b', 'c', 'd'].map((c) => c.repeat(63)).join('.')}.${'e'.repeat(57)}.com`)).toThrow(/255 characters: at most 254/);
  });
});

describe('parseWordpressId', () => {
  it('trims blanks as a user id does, and still refuses what is not a positive whole number', () => {
    expect(parseWordpressId(' 5 ')).toBe(5);
    expect(parseWordpressId('2147483647')).toBe(2147483647);
    expect(parseWordpressId(undefined)).toBeNull();
    expect(() => parseWordpressId(' ')).toThrow(/--wordpress-user-id ' ' must be a positive whole number/);
    expect(() => parseWordpressId('0')).toThrow(/must be a positive whole number/);
    expect(() => parseWordpressId('5 6')).toThrow(/must be a positive whole number/);
  });
});
