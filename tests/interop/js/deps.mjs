// Everything tests/interop/helia_peer.mjs takes from npm packages, in one place.
// scripts/interop-setup.sh copies this file next to .interop/node_modules, so the names
// below resolve there; helia_peer.mjs imports .interop/deps.mjs and calls one loader.

// The UnixFS importer and exporter alone: 0.3 s to load.
export async function unixfsDeps () {
  const [{ unixfs }, { fixedSize }, { balanced }, { MemoryBlockstore }, { CID }] = await Promise.all([
    import('@helia/unixfs'),
    import('ipfs-unixfs-importer/chunker'),
    import('ipfs-unixfs-importer/layout'),
    import('blockstore-core'),
    import('multiformats/cid')
  ])
  return { unixfs, fixedSize, balanced, MemoryBlockstore, CID }
}

// Those and a Helia node on libp2p: about 1.3 s to load.
export async function nodeDeps () {
  const [base, noise, yamux, bitswap, helia, heliaLibp2p, keys, identify, tcp, multiaddr, datastore] =
    await Promise.all([
      unixfsDeps(),
      import('@chainsafe/libp2p-noise'),
      import('@chainsafe/libp2p-yamux'),
      import('@helia/bitswap'),
      import('helia'),
      import('@helia/libp2p'),
      import('@libp2p/crypto/keys'),
      import('@libp2p/identify'),
      import('@libp2p/tcp'),
      import('@multiformats/multiaddr'),
      import('datastore-core')
    ])
  return {
    ...base,
    noise: noise.noise,
    yamux: yamux.yamux,
    withBitswap: bitswap.withBitswap,
    createHeliaLight: helia.createHeliaLight,
    withLibp2pLight: heliaLibp2p.withLibp2pLight,
    generateKeyPair: keys.generateKeyPair,
    identify: identify.identify,
    tcp: tcp.tcp,
    multiaddr: multiaddr.multiaddr,
    MemoryDatastore: datastore.MemoryDatastore
  }
}
