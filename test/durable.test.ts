// Durability barriers without blocking the thread: one syncfs (through a helper shell) shared by
// every caller waiting at that moment, and fsyncs when the helper cannot run.
import { afterAll, describe, expect, it, vi } from 'vitest';
import { existsSync, mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { tmpDir } from './helpers/env.js';

const dir = tmpDir('acm2-durable-');
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function someFiles(name: string, n: number): string[] {
  const d = path.join(dir, name);
  mkdirSync(d, { recursive: true });
  return Array.from({ length: n }, (_, i) => {
    const f = path.join(d, `f${i}`);
    writeFileSync(f, `data ${i}`);
    return f;
  });
}

describe('syncFilesAsync', () => {
  it('callers waiting at the same moment share one syncfs; a later caller gets a round of its own', async () => {
    vi.resetModules();
    const durable = await import('../src/durable.js');
    const batches = Array.from({ length: 8 }, (_, i) => someFiles(`shared${i}`, 5));
    await Promise.all(batches.map((files) => durable.syncFilesAsync(files, [path.dirname(files[0]!)])));
    expect(durable.syncfsStats()).toEqual({ rounds: 1, available: true });
    await durable.syncFilesAsync(someFiles('later', 5), []);
    expect(durable.syncfsStats().rounds).toBe(2);
  });

  const shm = '/dev/shm';
  const otherFs = existsSync(shm) && statSync(shm).dev !== statSync(dir).dev;
  it.skipIf(!otherFs)('callers on another file system do not join a round of this one', async () => {
    vi.resetModules();
    const durable = await import('../src/durable.js');
    const elsewhere = mkdtempSync(path.join(shm, 'acm2-durable-'));
    try {
      const there = Array.from({ length: 4 }, (_, i) => {
        const f = path.join(elsewhere, `f${i}`);
        writeFileSync(f, 'x');
        return f;
      });
      await Promise.all([durable.syncFilesAsync(someFiles('here', 5), []), durable.syncFilesAsync(there, [])]);
      expect(durable.syncfsStats().rounds).toBe(2);
    } finally {
      rmSync(elsewhere, { recursive: true, force: true });
    }
  });

  it('a caller arriving while a syncfs runs waits for the next round, shared with whoever else arrives then', async () => {
    vi.resetModules();
    const durable = await import('../src/durable.js');
    const first = durable.syncFilesAsync(someFiles('first', 5), []);
    await new Promise((r) => setImmediate(r)); // the first round is running now (its helper request is out)
    expect(durable.syncfsStats().rounds).toBe(1);
    // Its syncfs may have started before these callers' writes: they must not be answered by it.
    const late = [durable.syncFilesAsync(someFiles('late1', 5), []), durable.syncFilesAsync(someFiles('late2', 5), [])];
    await Promise.all([first, ...late]);
    expect(durable.syncfsStats().rounds).toBe(2);
  });

  it('a path with a line break is never sent to the helper (it reads one path per line): fsyncs instead', async () => {
    vi.resetModules();
    const durable = await import('../src/durable.js');
    const files = someFiles('line\nbreak', 5);
    await durable.syncFilesAsync(files, []);
    expect(durable.syncfsStats().rounds).toBe(0);
  });

  it('ACM2_SYNCFS=0: no syncfs round, every path fsynced', async () => {
    vi.resetModules();
    const durable = await import('../src/durable.js');
    process.env.ACM2_SYNCFS = '0';
    try {
      await durable.syncFilesAsync(someFiles('off', 6), []);
      expect(durable.syncfsStats().rounds).toBe(0);
      await expect(durable.syncFilesAsync([...someFiles('off2', 4), path.join(dir, 'gone')], [])).rejects.toThrow(/ENOENT/);
    } finally {
      delete process.env.ACM2_SYNCFS;
    }
  });

  it('without the helper (no shell on PATH) every path is fsynced instead, and a missing file is an error', async () => {
    vi.resetModules();
    const durable = await import('../src/durable.js');
    const saved = process.env.PATH;
    process.env.PATH = path.join(dir, 'no-such-bin');
    try {
      await durable.syncFilesAsync(someFiles('fallback', 5), []);
      expect(durable.syncfsStats().available).toBe(false);
      await expect(durable.syncFilesAsync([...someFiles('fallback2', 4), path.join(dir, 'gone')], [])).rejects.toThrow(/ENOENT/);
    } finally {
      process.env.PATH = saved;
    }
  });
});
