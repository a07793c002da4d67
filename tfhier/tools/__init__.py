"""Tools around tfhier: importing the MS-STCN authors' checkpoints and checking equality with their code."""
