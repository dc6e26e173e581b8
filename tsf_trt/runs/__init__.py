"""What `infer` and `demo` make of subjects: the request (request), subject jobs and folder runs
shared by many processes (jobs, claims, multigpu), writing outputs all or nothing (outputs,
writer, outcomes: the calibrated interval's block too), figures, and the demo. Built on
tsf_trt.synthesis and tsf_trt.inputs.
"""
