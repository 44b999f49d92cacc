// The demo's signed agent: an Ed25519 key published in a Web Bot Auth key directory (served by the demo
// identity provider) and requests signed with it per RFC 9421, with the same library the proxy verifies with.
import { generateKeyPairSync, type KeyObject, randomBytes } from 'node:crypto'
import { calculateJwkThumbprint, type JWK } from 'jose'
import { DIRECTORY_PATH } from '../identity/signatures/directory.ts'
import { loadHms, WEB_BOT_AUTH_TAG } from '../identity/signatures/verifier.ts'

export { DIRECTORY_PATH }

export class DemoSignedAgent {
  private constructor(
    private readonly privateKey: KeyObject,
    /** the public key as the directory publishes it */
    readonly publicJwk: JWK,
    /** JWK thumbprint: the Web Bot Auth keyid */
    readonly keyid: string,
  ) {}

  static async create(): Promise<DemoSignedAgent> {
    const { privateKey, publicKey } = generateKeyPairSync('ed25519')
    const publicJwk = publicKey.export({ format: 'jwk' }) as JWK
    return new DemoSignedAgent(privateKey, publicJwk, await calculateJwkThumbprint(publicJwk, 'sha256'))
  }

  /** the key directory document */
  directory(): string {
    return JSON.stringify({ keys: [this.publicJwk] })
  }

  /** Signature, Signature-Input and Signature-Agent for a GET of `url`, valid for a minute */
  async sign(url: string, agent: string): Promise<Record<string, string>> {
    const lib = await loadHms()
    const now = new Date()
    const signed = await lib.httpbis.signMessage(
      {
        key: lib.createSigner(this.privateKey, 'ed25519', this.keyid),
        name: 'sig1',
        fields: ['@authority', 'signature-agent'],
        params: ['created', 'expires', 'keyid', 'alg', 'nonce', 'tag'],
        paramValues: {
          created: now,
          expires: new Date(now.getTime() + 60_000),
          nonce: randomBytes(32).toString('base64'),
          tag: WEB_BOT_AUTH_TAG,
        },
      },
      { method: 'GET', url, headers: { 'signature-agent': JSON.stringify(agent) } },
    )
    return signed.headers as Record<string, string>
  }
}
