"""Seed 001 (784-100-100-10 sigmoid MLP, "Implementing Batch Normalization in Tensorflow"),
the seed's own TF1 code run under tf.compat.v1 graph mode (TF 2.21, CPU).

The seed's cells are transcribed below unchanged, in order (part 1: the networks with and
without BN trained side by side for 40,000 steps, then the first 100 test images one at a
time with batch statistics; part 2: batch_norm_wrapper with population statistics, 10,000
steps, saved, rebuilt with is_training=False, restored, the first 100 test images one at a
time). The only additions, each marked `# + ref`: seeding, one-thread sessions, recording
the numbers the seed prints or plots, and one extra read-only measurement at the very end
(the whole test set through the restored inference graph, which the seed does not print).
Usage: python tf1_seed001_ref.py SEED OUT.jsonl   (MNIST_IDX_DIR: the four IDX files)
"""
import json  # + ref
import os  # + ref
import sys  # + ref
import time  # + ref

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # + ref
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # + ref
import input_data_shim  # + ref: stands in for the removed TF1 MNIST module

input_data_shim.install()  # + ref
SEED, OUT = int(sys.argv[1]), sys.argv[2]  # + ref
STEPS_1 = int(os.environ.get("STEPS_1", "40000"))  # + ref: the seed's range(40000)
STEPS_2 = int(os.environ.get("STEPS_2", "10000"))  # + ref: the seed's range(10000)
record = {"impl": "tf1", "seed": SEED, "steps_1": STEPS_1, "steps_2": STEPS_2}  # + ref
t0 = time.time()  # + ref

# ---- Imports, config --------------------------------------------------------------------
import numpy as np  # noqa: E402
import tensorflow.compat.v1 as tf  # noqa: E402  (the seed's `tf`, TF1 API)

tf.disable_eager_execution()  # + ref: TF1 graph mode
np.random.seed(SEED)  # + ref: the predetermined weights and next_batch's shuffling
config = tf.ConfigProto(intra_op_parallelism_threads=int(os.environ.get("TF_THREADS", "1")),
                        inter_op_parallelism_threads=1)  # + ref
from tensorflow.examples.tutorials.mnist import input_data  # noqa: E402  (the shim)

mnist = input_data.read_data_sets('MNIST_data', one_hot=True)
# Generate predetermined random weights so the networks are similarly initialized
w1_initial = np.random.normal(size=(784,100)).astype(np.float32)
w2_initial = np.random.normal(size=(100,100)).astype(np.float32)
w3_initial = np.random.normal(size=(100,10)).astype(np.float32)

# Small epsilon value for the BN transform
epsilon = 1e-3
tf.set_random_seed(SEED)  # + ref (the graph has no random ops; set for completeness)

# ---- Building the graph -------------------------------------------------------------------
# Placeholders
x = tf.placeholder(tf.float32, shape=[None, 784])
y_ = tf.placeholder(tf.float32, shape=[None, 10])
# Layer 1 without BN
w1 = tf.Variable(w1_initial)
b1 = tf.Variable(tf.zeros([100]))
z1 = tf.matmul(x,w1)+b1
l1 = tf.nn.sigmoid(z1)
# Layer 1 with BN
w1_BN = tf.Variable(w1_initial)

# Note that pre-batch normalization bias is ommitted. The effect of this bias would be
# eliminated when subtracting the batch mean. Instead, the role of the bias is performed
# by the new beta variable. See Section 3.2 of the BN2015 paper.
z1_BN = tf.matmul(x,w1_BN)

# Calculate batch mean and variance
batch_mean1, batch_var1 = tf.nn.moments(z1_BN,[0])

# Apply the initial batch normalizing transform
z1_hat = (z1_BN - batch_mean1) / tf.sqrt(batch_var1 + epsilon)

# Create two new parameters, scale and beta (shift)
scale1 = tf.Variable(tf.ones([100]))
beta1 = tf.Variable(tf.zeros([100]))

# Scale and shift to obtain the final output of the batch normalization
# this value is fed into the activation function (here a sigmoid)
BN1 = scale1 * z1_hat + beta1
l1_BN = tf.nn.sigmoid(BN1)
# Layer 2 without BN
w2 = tf.Variable(w2_initial)
b2 = tf.Variable(tf.zeros([100]))
z2 = tf.matmul(l1,w2)+b2
l2 = tf.nn.sigmoid(z2)
# Layer 2 with BN, using Tensorflows built-in BN function
w2_BN = tf.Variable(w2_initial)
z2_BN = tf.matmul(l1_BN,w2_BN)
batch_mean2, batch_var2 = tf.nn.moments(z2_BN,[0])
scale2 = tf.Variable(tf.ones([100]))
beta2 = tf.Variable(tf.zeros([100]))
BN2 = tf.nn.batch_normalization(z2_BN,batch_mean2,batch_var2,beta2,scale2,epsilon)
l2_BN = tf.nn.sigmoid(BN2)
# Softmax
w3 = tf.Variable(w3_initial)
b3 = tf.Variable(tf.zeros([10]))
y  = tf.nn.softmax(tf.matmul(l2,w3)+b3)

w3_BN = tf.Variable(w3_initial)
b3_BN = tf.Variable(tf.zeros([10]))
y_BN  = tf.nn.softmax(tf.matmul(l2_BN,w3_BN)+b3_BN)
# Loss, optimizer and predictions
cross_entropy = -tf.reduce_sum(y_*tf.log(y))
cross_entropy_BN = -tf.reduce_sum(y_*tf.log(y_BN))

train_step = tf.train.GradientDescentOptimizer(0.01).minimize(cross_entropy)
train_step_BN = tf.train.GradientDescentOptimizer(0.01).minimize(cross_entropy_BN)

correct_prediction = tf.equal(tf.arg_max(y,1),tf.arg_max(y_,1))
accuracy = tf.reduce_mean(tf.cast(correct_prediction,tf.float32))
correct_prediction_BN = tf.equal(tf.arg_max(y_BN,1),tf.arg_max(y_,1))
accuracy_BN = tf.reduce_mean(tf.cast(correct_prediction_BN,tf.float32))

# ---- Training the network -----------------------------------------------------------------
zs, BNs, acc, acc_BN = [], [], [], []

sess = tf.InteractiveSession(config=config)  # + ref: config (thread count)
sess.run(tf.initialize_all_variables())
for i in range(STEPS_1):  # the seed: range(40000)
    batch = mnist.train.next_batch(60)
    train_step.run(feed_dict={x: batch[0], y_: batch[1]})
    train_step_BN.run(feed_dict={x: batch[0], y_: batch[1]})
    if i % 50 == 0:
        res = sess.run([accuracy,accuracy_BN,z2,BN2],
          feed_dict={x: mnist.test.images, y_: mnist.test.labels})
        acc.append(res[0])
        acc_BN.append(res[1])
        zs.append(np.mean(res[2],axis=0)) # record the mean value of z2 over the entire test set
        BNs.append(np.mean(res[3],axis=0)) # record the mean value of BN2 over the entire test set
        print(".",end="", flush=True)  # + ref: flush

zs, BNs, acc, acc_BN = np.array(zs), np.array(BNs), np.array(acc), np.array(acc_BN)
# + ref: what the seed plots (accuracy every 50 steps; z2 / BN2 means of the first five
# layer-2 neurons), keyed by the seed's i (measured after training batch i)
record["part1_acc"] = [round(float(a), 4) for a in acc]  # + ref
record["part1_acc_BN"] = [round(float(a), 4) for a in acc_BN]  # + ref
record["part1_z2_mean5"] = [[round(float(v), 5) for v in row[:5]] for row in zs]  # + ref
record["part1_BN2_mean5"] = [[round(float(v), 5) for v in row[:5]] for row in BNs]  # + ref

# ---- Making predictions with the model (batch statistics of one example) -------------------
predictions = []
correct = 0
for i in range(100):
    pred, corr = sess.run([tf.arg_max(y_BN,1), accuracy_BN],
                         feed_dict={x: [mnist.test.images[i]], y_: [mnist.test.labels[i]]})
    correct += corr
    predictions.append(pred[0])
print("PREDICTIONS:", predictions)
print("ACCURACY:", correct/100)
record["part1_single100_predictions"] = [int(p) for p in predictions]  # + ref
record["part1_single100"] = float(correct) / 100  # + ref
record["part1_single100_distinct"] = len(set(int(p) for p in predictions))  # + ref


# ---- Fixing the model for test time ---------------------------------------------------------
# this is a simpler version of Tensorflow's 'official' version. See:
# https://github.com/tensorflow/tensorflow/blob/master/tensorflow/contrib/layers/python/layers/layers.py#L102
def batch_norm_wrapper(inputs, is_training, decay = 0.999):

    scale = tf.Variable(tf.ones([inputs.get_shape()[-1]]))
    beta = tf.Variable(tf.zeros([inputs.get_shape()[-1]]))
    pop_mean = tf.Variable(tf.zeros([inputs.get_shape()[-1]]), trainable=False)
    pop_var = tf.Variable(tf.ones([inputs.get_shape()[-1]]), trainable=False)

    if is_training:
        batch_mean, batch_var = tf.nn.moments(inputs,[0])
        train_mean = tf.assign(pop_mean,
                               pop_mean * decay + batch_mean * (1 - decay))
        train_var = tf.assign(pop_var,
                              pop_var * decay + batch_var * (1 - decay))
        with tf.control_dependencies([train_mean, train_var]):
            return tf.nn.batch_normalization(inputs,
                batch_mean, batch_var, beta, scale, epsilon)
    else:
        return tf.nn.batch_normalization(inputs,
            pop_mean, pop_var, beta, scale, epsilon)


def build_graph(is_training):
    # Placeholders
    x = tf.placeholder(tf.float32, shape=[None, 784])
    y_ = tf.placeholder(tf.float32, shape=[None, 10])

    # Layer 1
    w1 = tf.Variable(w1_initial)
    z1 = tf.matmul(x,w1)
    bn1 = batch_norm_wrapper(z1, is_training)
    l1 = tf.nn.sigmoid(bn1)

    #Layer 2
    w2 = tf.Variable(w2_initial)
    z2 = tf.matmul(l1,w2)
    bn2 = batch_norm_wrapper(z2, is_training)
    l2 = tf.nn.sigmoid(bn2)

    # Softmax
    w3 = tf.Variable(w3_initial)
    b3 = tf.Variable(tf.zeros([10]))
    y  = tf.nn.softmax(tf.matmul(l2, w3))

    # Loss, Optimizer and Predictions
    cross_entropy = -tf.reduce_sum(y_*tf.log(y))

    train_step = tf.train.GradientDescentOptimizer(0.01).minimize(cross_entropy)

    correct_prediction = tf.equal(tf.arg_max(y,1),tf.arg_max(y_,1))
    accuracy = tf.reduce_mean(tf.cast(correct_prediction,tf.float32))

    return (x, y_), train_step, accuracy, y, tf.train.Saver()


#Build training graph, train and save the trained model

sess.close()
tf.reset_default_graph()
tf.set_random_seed(SEED)  # + ref
(x, y_), train_step, accuracy, _, saver = build_graph(is_training=True)
save_path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"temp-bn-save-{SEED}-{os.getpid()}")  # + ref

acc = []
with tf.Session(config=config) as sess:  # + ref: config
    sess.run(tf.initialize_all_variables())
    for i in range(STEPS_2):  # the seed: range(10000)
        batch = mnist.train.next_batch(60)
        train_step.run(feed_dict={x: batch[0], y_: batch[1]})
        if i % 50 == 0:
            res = sess.run([accuracy],feed_dict={x: mnist.test.images, y_: mnist.test.labels})
            acc.append(res[0])
            print(".",end="", flush=True)  # + ref: flush
    saved_model = saver.save(sess, save_path)  # the seed: 'temp-bn-save'

print("Final accuracy:", acc[-1])
record["part2_acc"] = [round(float(a), 4) for a in acc]  # + ref
record["part2_final_accuracy"] = float(acc[-1])  # + ref: the seed prints 0.9532

tf.reset_default_graph()
(x, y_), _, accuracy, y, saver = build_graph(is_training=False)

predictions = []
correct = 0
with tf.Session(config=config) as sess:  # + ref: config
    sess.run(tf.initialize_all_variables())
    saver.restore(sess, saved_model)
    for i in range(100):
        pred, corr = sess.run([tf.arg_max(y,1), accuracy],
                             feed_dict={x: [mnist.test.images[i]], y_: [mnist.test.labels[i]]})
        correct += corr
        predictions.append(pred[0])
    # + ref: the whole test set through the restored inference graph (not in the seed)
    record["part2_inference_test_accuracy"] = float(sess.run(  # + ref
        accuracy, feed_dict={x: mnist.test.images, y_: mnist.test.labels}))  # + ref
print("PREDICTIONS:", predictions)
print("ACCURACY:", correct/100)
record["part2_single100_predictions"] = [int(p) for p in predictions]  # + ref
record["part2_single100"] = float(correct) / 100  # + ref
record["wall_s"] = time.time() - t0  # + ref
for suffix in (".index", ".meta", ".data-00000-of-00001"):  # + ref: remove the checkpoint
    if os.path.exists(saved_model + suffix):  # + ref
        os.remove(saved_model + suffix)  # + ref
with open(OUT, "a") as f:  # + ref
    f.write(json.dumps(record) + "\n")  # + ref
