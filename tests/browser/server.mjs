// Starts the real rastercast binary on port 0 for browser tests, and launches Debian's Chromium.
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, existsSync, rmSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const data = (name) => path.resolve(root, '../shared/data', name);
const binary = process.env.RASTERCAST_BIN || path.join(root, 'target/release/rastercast');

export async function startServer(args = [], env = {}) {
  if (!existsSync(binary)) throw new Error(`build first: ${binary} is missing (cargo build --release)`);
  const dir = mkdtempSync(path.join(tmpdir(), 'rastercast-browser-'));
  const child = spawn(binary, ['serve', '--addr', '127.0.0.1:0', '--data-dir', dir, ...args], {
    stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, RUST_LOG: 'rastercast=warn', ...env },
  });
  const lines = readline.createInterface({ input: child.stdout });
  let token = null;
  const url = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('server did not start')), 20000);
    lines.on('line', (line) => {
      const text = line.trim();
      if (text.startsWith('rc_')) token = text;
      const match = text.match(/^rastercast listening on (http:\S+)/);
      if (match) { clearTimeout(timer); resolve(match[1]); }
    });
    child.on('exit', (code) => reject(new Error('server exited with ' + code)));
  });
  return {
    url, token, dir,
    /// A token for another user, made with the CLI as an operator would.
    tokenFor(user) {
      const out = execFileSync(binary, ['token', 'create', '--user', user, '--data-dir', dir], { encoding: 'utf8' });
      return out.trim().split('\n').pop().trim();
    },
    async stop() { child.kill('SIGTERM'); await new Promise((r) => child.on('exit', r)); rmSync(dir, { recursive: true, force: true }); },
  };
}

/// `--storage` and the AWS variables for a prefix of its own in the test bucket of the
/// S3-compatible store that scripts/test-s3.sh finds or starts (SeaweedFS).
export function objectStorage() {
  const endpoint = execFileSync(path.join(root, 'scripts/test-s3.sh'), { encoding: 'utf8' }).trim();
  const prefix = 'browser-' + Math.random().toString(16).slice(2);
  return {
    args: ['--storage', `s3://rastercast-test/${prefix}`],
    env: {
      AWS_ACCESS_KEY_ID: 'rastercast-test', AWS_SECRET_ACCESS_KEY: 'rastercast-test-secret',
      AWS_REGION: 'us-east-1', AWS_ENDPOINT_URL: endpoint,
    },
  };
}

export async function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-quic',
      '--no-first-run', '--disable-component-update', '--disable-sync'],
  });
}

/// An 8192×8192 3-band raster from shade.tif, made once, for conversions slow enough to watch.
export function bigRaster() {
  const file = path.join(root, 'target/tmp/big-8192x8192x3.tif');
  if (!existsSync(file)) {
    execFileSync('mkdir', ['-p', path.dirname(file)]);
    const partial = file + '.part.tif';
    execFileSync('gdal_translate', ['-q', '-outsize', '8192', '8192', '-b', '1', '-b', '1', '-b', '1', '-r', 'cubic',
      '-co', 'COMPRESS=DEFLATE', '-co', 'TILED=YES', data('shade.tif'), partial]);
    execFileSync('mv', [partial, file]);
  }
  return file;
}

/// RGB.byte.tif's first band with a colour table: classes drawn in their own colours.
export function palettedRaster() {
  const file = path.join(root, 'target/tmp/paletted.tif');
  if (!existsSync(file)) {
    execFileSync('mkdir', ['-p', path.dirname(file)]);
    const vrt = file + '.' + process.pid + '.vrt';
    execFileSync('gdal_translate', ['-q', '-of', 'VRT', '-b', '1', data('RGB.byte.tif'), vrt]);
    const entries = Array.from({ length: 256 }, (_, i) => `<Entry c1="${i}" c2="${(i * 3) % 256}" c3="${255 - i}" c4="255"/>`).join('');
    writeFileSync(vrt, readFileSync(vrt, 'utf8').replace('<ColorInterp>Red</ColorInterp>',
      `<ColorInterp>Palette</ColorInterp><ColorTable>${entries}</ColorTable>`));
    const partial = file + '.' + process.pid + '.part.tif';
    execFileSync('gdal_translate', ['-q', vrt, partial]);
    execFileSync('mv', [partial, file]);
    rmSync(vrt, { force: true });
  }
  return file;
}
