// AI agents and AI crawlers, recognised by user agent. This is the local overlay on top of the maintained
// crawler corpus (agent-data.generated.json, from the crawler-user-agents package): rows for what the corpus
// lacks (coding agents, user-triggered fetchers it does not list) and the operator and purpose of the agents
// it does list, which it does not record. Rows are tried in order, so a more specific token
// (Applebot-Extended) comes before anything it contains.

import type { UserAgentEvidence } from '../types.ts'

/**
 * Why an agent calls: `training` collects data for models, `search` indexes for an AI search or answer
 * engine, `assistant` fetches a page because a person just asked, `coding` is a coding agent acting in a
 * developer's tools, `autonomous` is an agent acting on its own on a task.
 */
export type AgentPurpose = NonNullable<UserAgentEvidence['purpose']>
export const AGENT_PURPOSES: readonly AgentPurpose[] = [
  'training',
  'search',
  'assistant',
  'coding',
  'autonomous',
]

export interface KnownAgent {
  /** the operator's documented product token, lower-cased: the identity name for anonymous agent traffic */
  product: string
  pattern: RegExp
  /** who runs it, e.g. "OpenAI" */
  operator: string
  purpose: AgentPurpose
}

export const KNOWN_AGENTS: readonly KnownAgent[] = [
  { product: 'gptbot', pattern: /\bGPTBot\b/i, operator: 'OpenAI', purpose: 'training' },
  { product: 'oai-searchbot', pattern: /\bOAI-SearchBot\b/i, operator: 'OpenAI', purpose: 'search' },
  { product: 'chatgpt-user', pattern: /\bChatGPT-User\b/i, operator: 'OpenAI', purpose: 'assistant' },
  {
    product: 'openai-codex',
    pattern: /\bcodex_cli_rs\/|\bcodex[-_ ]cli\b|\bOpenAI[- ]Codex\b/i,
    operator: 'OpenAI',
    purpose: 'coding',
  },
  { product: 'claude-searchbot', pattern: /\bClaude-SearchBot\b/i, operator: 'Anthropic', purpose: 'search' },
  { product: 'claude-user', pattern: /\bClaude-User\b/i, operator: 'Anthropic', purpose: 'assistant' },
  { product: 'claude-web', pattern: /\bClaude-Web\b/i, operator: 'Anthropic', purpose: 'assistant' },
  { product: 'claudebot', pattern: /\bClaudeBot\b/i, operator: 'Anthropic', purpose: 'training' },
  {
    product: 'claude-code',
    pattern: /\bclaude-cli\/|\bclaude-code\b|\bClaude Code\b/i,
    operator: 'Anthropic',
    purpose: 'coding',
  },
  { product: 'anthropic-ai', pattern: /\banthropic-ai\b/i, operator: 'Anthropic', purpose: 'training' },
  {
    product: 'perplexity-user',
    pattern: /\bPerplexity-?User\b/i,
    operator: 'Perplexity',
    purpose: 'assistant',
  },
  { product: 'perplexitybot', pattern: /\bPerplexityBot\b/i, operator: 'Perplexity', purpose: 'search' },
  { product: 'bytespider', pattern: /\bBytespider\b/i, operator: 'ByteDance', purpose: 'training' },
  { product: 'tiktokspider', pattern: /\bTikTokSpider\b/i, operator: 'ByteDance', purpose: 'training' },
  { product: 'ccbot', pattern: /\bCCBot\b/i, operator: 'Common Crawl', purpose: 'training' },
  {
    product: 'meta-externalagent',
    pattern: /\bmeta-externalagent\b/i,
    operator: 'Meta',
    purpose: 'training',
  },
  {
    product: 'meta-externalfetcher',
    pattern: /\bmeta-externalfetcher\b/i,
    operator: 'Meta',
    purpose: 'assistant',
  },
  { product: 'facebookbot', pattern: /\bFacebookBot\b/, operator: 'Meta', purpose: 'training' },
  { product: 'amazonbot', pattern: /\bAmazonbot\b/i, operator: 'Amazon', purpose: 'training' },
  { product: 'amzn-searchbot', pattern: /\bAmzn-SearchBot\b/i, operator: 'Amazon', purpose: 'search' },
  { product: 'amzn-user', pattern: /\bAmzn-User\b/i, operator: 'Amazon', purpose: 'assistant' },
  { product: 'google-extended', pattern: /\bGoogle-Extended\b/i, operator: 'Google', purpose: 'training' },
  {
    product: 'google-cloudvertexbot',
    pattern: /\bGoogle-CloudVertexBot\b/i,
    operator: 'Google',
    purpose: 'search',
  },
  {
    product: 'gemini-deep-research',
    pattern: /\bGemini-Deep-Research\b/i,
    operator: 'Google',
    purpose: 'assistant',
  },
  {
    product: 'google-notebooklm',
    pattern: /\bGoogle-NotebookLM\b/i,
    operator: 'Google',
    purpose: 'assistant',
  },
  { product: 'geminicli', pattern: /\bGeminiCLI\/\d/i, operator: 'Google', purpose: 'coding' },
  {
    product: 'applebot-extended',
    pattern: /\bApplebot-Extended\b/i,
    operator: 'Apple',
    purpose: 'training',
  },
  {
    product: 'azureai-searchbot',
    pattern: /\bAzureAI-SearchBot\b/i,
    operator: 'Microsoft',
    purpose: 'search',
  },
  {
    product: 'cohere-ai',
    pattern: /\bcohere-ai\b|\bcohere-training-data-crawler\b/i,
    operator: 'Cohere',
    purpose: 'training',
  },
  { product: 'deepseekbot', pattern: /\bDeepSeekBot\b/i, operator: 'DeepSeek', purpose: 'training' },
  { product: 'ai2bot', pattern: /\bAI2Bot\b/i, operator: 'Ai2', purpose: 'training' },
  { product: 'diffbot', pattern: /\bDiffbot\b/i, operator: 'Diffbot', purpose: 'training' },
  { product: 'youbot', pattern: /\bYouBot\b/i, operator: 'You.com', purpose: 'search' },
  { product: 'phindbot', pattern: /\bPhindBot\b/i, operator: 'Phind', purpose: 'search' },
  { product: 'kagi-fetcher', pattern: /\bkagi-fetcher\b/i, operator: 'Kagi', purpose: 'assistant' },
  {
    product: 'mistralai-user',
    pattern: /\bMistralAI-User\b/i,
    operator: 'Mistral AI',
    purpose: 'assistant',
  },
  {
    product: 'duckassistbot',
    pattern: /\bDuckAssistBot\b/i,
    operator: 'DuckDuckGo',
    purpose: 'assistant',
  },
  {
    product: 'github-copilot',
    pattern: /\bGitHubCopilot(?:Chat)?\b|\bcopilot-(?:language-server|developer-cli)\b/i,
    operator: 'GitHub',
    purpose: 'coding',
  },
  { product: 'cursor', pattern: /\bCursor\/\d/, operator: 'Anysphere', purpose: 'coding' },
  { product: 'devin', pattern: /\bDevin\b/, operator: 'Cognition', purpose: 'coding' },
  { product: 'aider', pattern: /\baider\/\d|\baider\.chat\b/i, operator: 'Aider', purpose: 'coding' },
]

export function findAgent(ua: string): KnownAgent | undefined {
  for (const a of KNOWN_AGENTS) {
    if (a.pattern.test(ua)) return a
  }
  return undefined
}
