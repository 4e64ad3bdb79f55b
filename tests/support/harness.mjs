// One harness for every end-to-end test: process control (process.mjs: the Worker built once, `wrangler dev` on free loopback ports) and the protocol clients that speak both framings to it (clients.mjs).
export * from './process.mjs';
export * from './clients.mjs';
