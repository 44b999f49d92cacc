// One variant's scrapes for `npm run bench -- --prom`, in a process of its own (see measureScrapes): the job
// comes as the one argument, the rows go to stdout as JSON.
import { measureScrapes, type ScrapeJob } from './prom-cost.ts'

const job = JSON.parse(process.argv[2] ?? '') as ScrapeJob
process.stdout.write(JSON.stringify(await measureScrapes(job)))
