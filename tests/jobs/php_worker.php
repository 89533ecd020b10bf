<?php
// A pecl/gearman worker for the interop tests: php php_worker.php HOST PORT FUNCTION JOBS
// Serves JOBS jobs of FUNCTION, then exits. For workload W it streams "php-data:" . W
// (WORK_DATA), sends status 1/2, and returns "php:" . strrev(W). A workload "raise" makes it
// answer WORK_EXCEPTION "php says no"; "fail" answers WORK_FAIL.
[$_, $host, $port, $fn, $jobs] = $argv;
$w = new GearmanWorker();
$w->addServer($host, (int)$port);
$w->addFunction($fn, function (GearmanJob $job) {
    $data = $job->workload();
    if ($data === "raise") {
        $job->sendException("php says no");
        return "";
    }
    if ($data === "fail") {
        $job->sendFail();
        return "";
    }
    $job->sendData("php-data:" . $data);
    $job->sendStatus(1, 2);
    return "php:" . strrev($data);
});
fwrite(STDOUT, "ready\n");
fflush(STDOUT);
for ($i = 0; $i < (int)$jobs; $i++) {
    if (!$w->work()) {
        fwrite(STDERR, "work failed: " . $w->returnCode() . " " . $w->error() . "\n");
        exit(1);
    }
}
