// AI agents and AI crawlers, recognised by user agent. This is data: add a row to teach the proxy a new agent.
// Rows are tried in order, so a more specific token (Applebot-Extended) comes before anything it contains.

export type AgentPurpose = 'training' | 'search' | 'user-fetch' | 'coding'

export interface KnownAgent {
  /** short stable product name, used as the identity name for anonymous agent traffic */
  product: string
  pattern: RegExp
  vendor: string
  purpose: AgentPurpose
}

export const KNOWN_AGENTS: readonly KnownAgent[] = [
  { product: 'gptbot', pattern: /\bGPTBot\b/i, vendor: 'OpenAI', purpose: 'training' },
  { product: 'oai-searchbot', pattern: /\bOAI-SearchBot\b/i, vendor: 'OpenAI', purpose: 'search' },
  { product: 'chatgpt-user', pattern: /\bChatGPT-User\b/i, vendor: 'OpenAI', purpose: 'user-fetch' },
  {
    product: 'openai-codex',
    pattern: /\bcodex_cli_rs\/|\bcodex[-_ ]cli\b|\bOpenAI[- ]Codex\b/i,
    vendor: 'OpenAI',
    purpose: 'coding',
  },
  { product: 'claude-searchbot', pattern: /\bClaude-SearchBot\b/i, vendor: 'Anthropic', purpose: 'search' },
  { product: 'claude-user', pattern: /\bClaude-User\b/i, vendor: 'Anthropic', purpose: 'user-fetch' },
  { product: 'claudebot', pattern: /\bClaudeBot\b/i, vendor: 'Anthropic', purpose: 'training' },
  {
    product: 'claude-code',
    pattern: /\bclaude-cli\/|\bclaude-code\b|\bClaude Code\b/i,
    vendor: 'Anthropic',
    purpose: 'coding',
  },
  { product: 'anthropic-ai', pattern: /\banthropic-ai\b/i, vendor: 'Anthropic', purpose: 'training' },
  {
    product: 'perplexity-user',
    pattern: /\bPerplexity-User\b/i,
    vendor: 'Perplexity',
    purpose: 'user-fetch',
  },
  { product: 'perplexitybot', pattern: /\bPerplexityBot\b/i, vendor: 'Perplexity', purpose: 'search' },
  { product: 'bytespider', pattern: /\bBytespider\b/i, vendor: 'ByteDance', purpose: 'training' },
  { product: 'ccbot', pattern: /\bCCBot\b/i, vendor: 'Common Crawl', purpose: 'training' },
  { product: 'meta-externalagent', pattern: /\bmeta-externalagent\b/i, vendor: 'Meta', purpose: 'training' },
  {
    product: 'meta-externalfetcher',
    pattern: /\bmeta-externalfetcher\b/i,
    vendor: 'Meta',
    purpose: 'user-fetch',
  },
  { product: 'amazonbot', pattern: /\bAmazonbot\b/i, vendor: 'Amazon', purpose: 'training' },
  { product: 'google-extended', pattern: /\bGoogle-Extended\b/i, vendor: 'Google', purpose: 'training' },
  { product: 'applebot-extended', pattern: /\bApplebot-Extended\b/i, vendor: 'Apple', purpose: 'training' },
  {
    product: 'cohere-ai',
    pattern: /\bcohere-ai\b|\bcohere-training-data-crawler\b/i,
    vendor: 'Cohere',
    purpose: 'training',
  },
  { product: 'diffbot', pattern: /\bDiffbot\b/i, vendor: 'Diffbot', purpose: 'training' },
  { product: 'youbot', pattern: /\bYouBot\b/i, vendor: 'You.com', purpose: 'search' },
  { product: 'mistralai-user', pattern: /\bMistralAI-User\b/i, vendor: 'Mistral AI', purpose: 'user-fetch' },
  { product: 'duckassistbot', pattern: /\bDuckAssistBot\b/i, vendor: 'DuckDuckGo', purpose: 'user-fetch' },
  {
    product: 'github-copilot',
    pattern: /\bGitHubCopilot(?:Chat)?\b|\bcopilot-(?:language-server|developer-cli)\b/i,
    vendor: 'GitHub',
    purpose: 'coding',
  },
  { product: 'cursor', pattern: /\bCursor\/\d/, vendor: 'Anysphere', purpose: 'coding' },
  { product: 'devin', pattern: /\bDevin\/\d/i, vendor: 'Cognition', purpose: 'coding' },
  { product: 'aider', pattern: /\baider\/\d|\baider\.chat\b/i, vendor: 'Aider', purpose: 'coding' },
]

export function findAgent(ua: string): KnownAgent | undefined {
  for (const a of KNOWN_AGENTS) {
    if (a.pattern.test(ua)) return a
  }
  return undefined
}
