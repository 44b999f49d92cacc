// The user-agent extractor lives with the classifier; this is its place in the extractor folder.
export { useragentExtractor } from '../useragent.ts'
