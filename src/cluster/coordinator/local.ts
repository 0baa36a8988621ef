// The address a plan gives a stage that runs in this process rather than on a node. Its own
// module so that an in-process run imports none of the discovery and gRPC code.
export const LOCAL_ADDRESS = 'in-process';
